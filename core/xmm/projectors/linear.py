"""The ``linear`` output projector: one linear map per signal token, plus a learned token-axis map when S != T."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from xmm.errors import ShapeError
from xmm.projectors._registry import register_projector
from xmm.projectors.base import Projector, ProjectorConfig


class LinearProjectorConfig(ProjectorConfig):
    type: Literal["linear"] = "linear"


@register_projector("linear")
class LinearProjector(Projector):
    """``[B, S, d_llm] -> Linear -> [B, S, D]``; when ``num_input_tokens`` S differs from T, a learned ``S -> T``
    linear map over the token axis gives ``[B, T, D]`` (each output token a weighted sum of the signal tokens)."""

    config_class = LinearProjectorConfig

    def __init__(self, config: LinearProjectorConfig) -> None:
        super().__init__(config)
        t, d = config.output_shape
        self.proj = nn.Linear(config.input_dim, d)
        s = config.num_input_tokens
        if s is not None and s != t:
            self.token_map: nn.Linear | None = nn.Linear(s, t)
        else:
            self.token_map = None

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.check_input(hidden, mask)
        t = self.config.output_shape[0]
        if self.token_map is None and hidden.shape[1] != t:
            raise ShapeError(
                f"linear projector maps token by token: it needs S = T = {t} signal tokens, got S = {hidden.shape[1]}; "
                f"set num_input_tokens to learn an S -> T map"
            )
        x = self.proj(hidden) * mask.unsqueeze(-1).to(hidden.dtype)  # masked tokens contribute nothing
        if self.token_map is not None:
            x = self.token_map(x.transpose(1, 2)).transpose(1, 2)
        return x

