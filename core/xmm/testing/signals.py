"""Synthetic signals for tests of audio-like modalities."""

from __future__ import annotations

import numpy as np

RATE = 16000


def sine(freq: float = 440.0, seconds: float = 1.0, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    """A sine tone: float32 samples ``[round(seconds * rate)]`` of amplitude ``amp``."""
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
