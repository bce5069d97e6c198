"""Helpers shared by the speech plugin's tests (a uniquely named module: a plain `conftest` import would clash)."""

from __future__ import annotations

import numpy as np

RATE = 16000


def tone(freq: float = 220.0, seconds: float = 1.0, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
