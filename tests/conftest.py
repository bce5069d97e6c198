"""Shared fixtures for the core test suite."""

from __future__ import annotations

import pytest
from xmm.registry import reset_registry


@pytest.fixture
def fresh_registry():
    """A process-wide registry rebuilt for the test and forgotten afterwards (in-process plugin registrations)."""
    reset_registry()
    from xmm.registry import get_registry

    yield get_registry()
    reset_registry()
