"""LLaVA-style projections: ``linear`` (LLaVA-1) and ``mlp`` (LLaVA-1.5's two-layer GELU MLP).

Both can first cut the number of tokens of a square grid of ``T = S x S`` tokens: ``pool = p`` averages each ``p x p``
window (a partial window at the edge averages the tokens it has, so 7 x 7 with ``p = 3`` gives 3 x 3), and
``pixel_shuffle = s`` concatenates each ``s x s`` window along the channel axis (``[B, S*S, D] -> [B, S*S/s^2, D*s^2]``,
as InternVL / LLaVA-OneVision do; ``S`` must be a multiple of ``s``). Padded tokens take no part: a window's mask is
True when any of its tokens is.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from xmm.bridges._registry import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput
from xmm.errors import ShapeError


class _TokenReduction(BridgeConfig):
    pool: int | None = Field(None, gt=0, description="average-pool p x p windows of a square token grid")
    pixel_shuffle: int | None = Field(None, gt=0, description="concatenate s x s windows of a square grid along channels")

    @model_validator(mode="after")
    def _one_reduction(self) -> _TokenReduction:
        if self.pool and self.pixel_shuffle:
            raise ValueError("use either pool or pixel_shuffle, not both")
        return self

    @property
    def projected_dim(self) -> int:
        """Width entering the projection (``input_dim * s^2`` after a pixel shuffle)."""
        return self.input_dim * (self.pixel_shuffle or 1) ** 2


class LinearConfig(_TokenReduction):
    type: Literal["linear"] = "linear"


class MLPConfig(_TokenReduction):
    type: Literal["mlp"] = "mlp"
    hidden_dim: int | None = Field(None, gt=0, description="default: output_dim, as LLaVA-1.5 does")
    num_layers: int = Field(2, gt=0)
    tokens_per_input: int = Field(
        1, ge=1, le=16, description="LLM tokens per (reduced) input token: the last layer is k times wider and its "
        "output is split into k consecutive tokens, so one region can read like a phrase ('red' 'circle')"
    )
    position_embeddings: int = Field(
        0, ge=0, description="learned vectors added by output position, for inputs with a fixed layout (an image grid, "
        "a feature list): how many positions (0: off). Tells the LLM *where* a token came from without it having to "
        "count media tokens"
    )


def _grid(owner: str, features: torch.Tensor) -> int:
    t = features.shape[1]
    side = math.isqrt(t)
    if side * side != t or t == 0:
        raise ShapeError(
            f"{owner} reduces tokens on a square grid: expects features [B, S*S, D], got T = {t} tokens, which is not a "
            "square (drop the CLS token first, or turn pool/pixel_shuffle off)"
        )
    return side


def grid_pool(features: torch.Tensor, mask: torch.Tensor, p: int, owner: str = "bridge") -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average over ``p x p`` windows: ``[B, S*S, D] -> [B, ceil(S/p)^2, D]``, mask ``[B, S*S] -> [B, ceil(S/p)^2]``."""
    side = _grid(owner, features)
    b, _, d = features.shape
    n = -(-side // p)
    pad = n * p - side
    w = mask.to(features.dtype)[..., None]
    x = (features * w).view(b, side, side, d)
    w = w.view(b, side, side, 1)
    if pad:  # partial windows at the edge: pad with zero weight
        x = F.pad(x, (0, 0, 0, pad, 0, pad))
        w = F.pad(w, (0, 0, 0, pad, 0, pad))
    x = x.view(b, n, p, n, p, d).sum(dim=(2, 4))
    w = w.view(b, n, p, n, p, 1).sum(dim=(2, 4))
    return (x / w.clamp_min(1)).view(b, n * n, d), (w > 0).view(b, n * n)


def grid_shuffle(features: torch.Tensor, mask: torch.Tensor, s: int, owner: str = "bridge") -> tuple[torch.Tensor, torch.Tensor]:
    """Space-to-channel: ``[B, S*S, D] -> [B, (S/s)^2, D*s*s]`` (row-major within each window)."""
    side = _grid(owner, features)
    if side % s:
        raise ShapeError(f"{owner}: pixel_shuffle={s} needs a grid side divisible by {s}, got a {side} x {side} grid")
    b, _, d = features.shape
    n = side // s
    x = (features * mask.to(features.dtype)[..., None]).view(b, n, s, n, s, d)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, n * n, s * s * d)
    m = mask.view(b, n, s, n, s).permute(0, 1, 3, 2, 4).reshape(b, n * n, s * s).any(dim=-1)
    return x, m


class _ReducingBridge(Bridge):
    config: LinearConfig | MLPConfig

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int | None:
        """``T`` after the token reduction: ``ceil(S/p)^2`` pooled, ``(S/s)^2`` shuffled (``T = S x S``), else ``T``."""
        if num_input_tokens is None:
            return None
        side = math.isqrt(num_input_tokens)
        if self.config.pool:
            return (-(-side // self.config.pool)) ** 2 if side * side == num_input_tokens else None
        if self.config.pixel_shuffle:
            return (side // self.config.pixel_shuffle) ** 2 if side * side == num_input_tokens else None
        return num_input_tokens

    def reduce(self, features: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        valid = self.check_input(features, mask)
        name = type(self).__name__
        if self.config.pool:
            return grid_pool(features, valid, self.config.pool, name)
        if self.config.pixel_shuffle:
            return grid_shuffle(features, valid, self.config.pixel_shuffle, name)
        return features, valid


@register_bridge("linear")
class LinearBridge(_ReducingBridge):
    """One linear map per token: ``[B, T, D_enc] -> [B, T', d_llm]`` (``T' = T`` without token reduction)."""

    config_class = LinearConfig

    def __init__(self, config: LinearConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.projected_dim, config.output_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:
        x, mask = self.reduce(features, mask)
        return BridgeOutput(self.proj(x), mask)


@register_bridge("mlp")
class MLPBridge(_ReducingBridge):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear, per token (after the optional token reduction);
    ``[B, T, D_enc] -> [B, T' * k, d_llm]`` with ``k = tokens_per_input``, plus learned position vectors if set."""

    config_class = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_dim or config.output_dim
        out = config.output_dim * config.tokens_per_input
        layers: list[nn.Module] = [nn.Linear(config.projected_dim, hidden if config.num_layers > 1 else out)]
        for i in range(config.num_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden, out if i == config.num_layers - 2 else hidden)]
        self.mlp = nn.Sequential(*layers)
        # zero at the start: the bridge begins as plain LLaVA and learns how much position to add
        self.position = nn.Parameter(torch.zeros(config.position_embeddings, config.output_dim)) if config.position_embeddings else None

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int | None:
        """``k = tokens_per_input`` outputs per reduced input token."""
        reduced = super().num_output_tokens(num_input_tokens, modality=modality)
        return None if reduced is None else reduced * self.config.tokens_per_input

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:
        x, mask = self.reduce(features, mask)
        return self.project(x, mask)

    def project(self, x: torch.Tensor, mask: torch.Tensor) -> BridgeOutput:
        """Reduced tokens ``[B, T', D_in]`` -> ``[B, T' * k, d_llm]`` (the MLP, the split, the position vectors)."""
        k = self.config.tokens_per_input
        x = self.mlp(x)
        if k > 1:
            x = x.view(x.shape[0], x.shape[1] * k, self.config.output_dim)
            mask = mask.repeat_interleave(k, dim=1)
        if self.position is not None:
            t = x.shape[1]
            if t > self.position.shape[0]:
                raise ShapeError(f"MLPBridge: {t} output tokens but position_embeddings = {self.position.shape[0]}; "
                                 "raise position_embeddings to the largest number of output tokens")
            x = x + self.position[:t]
        return BridgeOutput(x, mask)
