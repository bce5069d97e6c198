"""The Bridge contract, checked for every registered bridge (core and plugins) with its ``tiny_config``.

The checks live in :class:`xmm.testing.contracts.BridgeContract`, so that a plugin's tests hold its bridges to the
same contract with one subclass.
"""

from __future__ import annotations

from xmm.registry import get_registry
from xmm.testing.contracts import BridgeContract


def test_core_bridges_are_registered():
    assert {"linear", "mlp", "qformer", "perceiver", "concept-grouping", "cformer"} <= set(get_registry().bridges)


class TestBridgeContract(BridgeContract):
    """Every bridge of the process-wide registry (``bridges = None``)."""
