"""Fixtures of the audio plugin's tests (the tiny LLM, SmolLM2 and $XMM_HOME ones come from xmm.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from xmm.testing.signals import RATE, sine


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    import soundfile as sf

    path = tmp_path / "tone.wav"
    sf.write(str(path), sine(), RATE, subtype="PCM_16")
    return path


@pytest.fixture(autouse=True)
def _isolated(xmm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in xmm.testing's empty $XMM_HOME, without the user's audio limits."""
    for var in ("XMM_AUDIO_MAX_SECONDS", "XMM_AUDIO_REJECT_SILENCE", "XMM_AUDIO_SILENCE_DBFS"):
        monkeypatch.delenv(var, raising=False)
