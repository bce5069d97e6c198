"""Bridge tests use tiny models: one intra-op thread is faster for them and keeps a shared CPU usable."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _tiny_models(one_thread: None) -> None:
    """Every test here runs with xmm.testing's ``one_thread``."""
