"""Bridges: trainable interfaces from encoder features to LLM embeddings (timm-style registry)."""

from __future__ import annotations

# importing the modules runs their decorators
from xmm.bridges import cformer, grouping, guided, linear, perceiver, qformer, stack  # noqa: F401
from xmm.bridges._registry import BRIDGES, register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput

__all__ = ["BRIDGES", "Bridge", "BridgeConfig", "BridgeOutput", "register_bridge"]
