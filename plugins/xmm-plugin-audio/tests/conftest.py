"""Fixtures of the audio plugin's tests: small WAV files and tiny transformers audio models saved to tmp."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from audio_helpers import RATE, tone

# the shared converted SmolLM2 lives in the user's XMM_HOME (captured before the per-test isolation below)
_DEFAULT_HOME = os.environ.get("XMM_HOME")


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    import soundfile as sf

    path = tmp_path / "tone.wav"
    sf.write(str(path), tone(), RATE, subtype="PCM_16")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMM_HOME", str(tmp_path / "xmm-home"))
    for var in ("XMM_AUDIO_MAX_SECONDS", "XMM_AUDIO_REJECT_SILENCE", "XMM_AUDIO_SILENCE_DBFS"):
        monkeypatch.delenv(var, raising=False)


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
