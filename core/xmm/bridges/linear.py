"""LLaVA-style projections: ``linear`` (LLaVA-1) and ``mlp`` (LLaVA-1.5's two-layer GELU MLP)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from xmm.bridges import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput


class LinearConfig(BridgeConfig):
    type: Literal["linear"] = "linear"


class MLPConfig(BridgeConfig):
    type: Literal["mlp"] = "mlp"
    hidden_dim: int | None = None  # default: output_dim, as LLaVA-1.5 does
    num_layers: int = 2


@register_bridge("linear")
class LinearBridge(Bridge):
    """One linear map per token: ``[B, T, D_enc] -> [B, T, d_llm]``."""

    config_class = LinearConfig

    def __init__(self, config: LinearConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.input_dim, config.output_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:
        mask = self.check_input(features, mask)
        return BridgeOutput(self.proj(features), mask)


@register_bridge("mlp")
class MLPBridge(Bridge):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear, per token."""

    config_class = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_dim or config.output_dim
        layers: list[nn.Module] = [nn.Linear(config.input_dim, hidden)]
        for i in range(config.num_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden, config.output_dim if i == config.num_layers - 2 else hidden)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:
        mask = self.check_input(features, mask)
        return BridgeOutput(self.mlp(features), mask)
