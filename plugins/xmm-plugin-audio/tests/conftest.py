"""Fixtures of the audio plugin's tests: small WAV files and tiny transformers audio models saved to tmp."""

from __future__ import annotations

from pathlib import Path

import pytest
from audio_helpers import RATE, tone


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
