"""Fixtures of the device plugin tests (the tiny LLM, registry and $XMM_HOME ones come from xmm.testing)."""

from __future__ import annotations

from typing import Any

import pytest


def snapshot(ts: str = "2024-05-01T12:00:00Z", **over: Any) -> dict[str, Any]:
    """A complete, valid raw snapshot; keyword arguments replace top-level fields."""
    base: dict[str, Any] = {
        "timestamp": ts,
        "battery": {"level": 54, "charging": False},
        "temperature": 36.5,
        "cpu_load": 35,
        "memory_load": 61,
        "storage": {"used": 100, "total": 128},
        "network": {"type": "wifi", "signal": 80},
        "screen": {"on": True, "brightness": 70},
        "volume": 40,
        "location_permission": "while_in_use",
        "foreground_app": "maps",
    }
    base.update(over)
    return base


@pytest.fixture
def make_snapshot():
    return snapshot


@pytest.fixture(autouse=True)
def _isolated(xmm_home, one_thread) -> None:
    """Every test runs in xmm.testing's empty $XMM_HOME with one torch thread (the models here are tiny)."""
