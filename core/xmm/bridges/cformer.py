"""X-LLM's speech interface: CIF to token-level features, the C-Former, and the adapter to the LLM width.

Frame-level speech features ``[B, T, D_enc]`` are integrated into token-level features by continuous integrate-and-fire
(:mod:`xmm.bridges.cif`), so the number of embeddings follows the number of spoken tokens; a small transformer (the
C-Former) contextualises them and a linear adapter maps them to ``d_llm``. ``Q`` varies per item: the output is padded to
the longest item and masked.

``forward(..., target_lengths=[B])`` (training) scales the CIF weights to the target token counts and returns the quantity
loss in ``aux["cif_quantity"]`` (mean of ``|sum(alpha) - target|``); ``aux["cif_alpha_sum"]`` ``[B]`` and
``aux["cif_tokens"]`` ``[B]`` (tokens fired per item) are always there.

``prompt_tokens`` learned vectors come first in every item's output, before the fired ones. They have no token of
their own: with the LLM frozen they are a trained instruction (prompt tuning) that the LM loss shapes, e.g. into
"read the following tokens back", while the fired vectors keep standing for the spoken tokens. Objectives that
compare fired vectors with transcript tokens skip them (:attr:`CFormerBridge.num_prompt_tokens`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xmm.bridges._layers import TransformerBlock, init_weights, key_mask
from xmm.bridges._registry import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput
from xmm.bridges.cif import CIFWeightPredictor, integrate_and_fire
from xmm.errors import ShapeError


class CFormerConfig(BridgeConfig):
    type: Literal["cformer"] = "cformer"
    hidden_size: int = Field(512, gt=0, description="C-Former width")
    num_layers: int = Field(2, ge=0)
    num_heads: int = Field(8, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_tokens: int = Field(512, gt=0, description="position embeddings: most tokens one item may fire")
    cif_threshold: float = Field(1.0, gt=0)
    cif_tail_threshold: float = Field(0.5, ge=0, description="fire the last partial token at inference from this mass")
    cif_channels: int = Field(256, gt=0, description="channels of the weight predictor's convolution")
    cif_kernel_size: int = Field(3, gt=0)
    prompt_tokens: int = Field(0, ge=0, description="learned vectors before the fired ones (prompt tuning)")

    @model_validator(mode="after")
    def _check(self) -> CFormerConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.cif_kernel_size % 2 == 0:
            raise ValueError(f"cif_kernel_size must be odd (centred), got {self.cif_kernel_size}")
        return self


@register_bridge("cformer")
class CFormerBridge(Bridge):
    """Speech frames ``[B, T, D_enc]`` -> token-level embeddings ``[B, K, d_llm]`` (K = most tokens fired in the batch)."""

    config_class = CFormerConfig
    config: CFormerConfig

    def __init__(self, config: CFormerConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.cif = CIFWeightPredictor(config.input_dim, config.cif_channels, config.cif_kernel_size)
        self.in_proj = nn.Linear(config.input_dim, h)
        self.position_embeddings = nn.Embedding(config.max_tokens, h)
        self.layers = nn.ModuleList(
            TransformerBlock(h, config.num_heads, config.mlp_ratio, config.dropout) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(h)
        self.adapter = nn.Linear(h, config.output_dim)
        init_weights(self, 0.02)
        # registered only when used, so checkpoints without prompt vectors load as before
        self.prompt = nn.Parameter(torch.randn(config.prompt_tokens, config.output_dim) * 0.02) if config.prompt_tokens else None

    @property
    def num_prompt_tokens(self) -> int:
        """Learned vectors at the start of every item's output that stand for no spoken token."""
        return self.config.prompt_tokens

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> CFormerConfig:
        return CFormerConfig(input_dim=input_dim, output_dim=output_dim, hidden_size=32, num_layers=1, num_heads=2, cif_channels=16)

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> None:
        """CIF fires as many tokens as its weights integrate, so Q depends on the input's content, not its length."""
        return None

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        modality: str | None = None,
        target_lengths: torch.Tensor | None = None,
    ) -> BridgeOutput:
        """features ``[B, T, D_enc]``, mask ``[B, T]``, target_lengths ``[B]`` (training) -> ``[B, K, d_llm]`` + mask."""
        valid = self.check_input(features, mask)
        x = features * valid[..., None].to(features.dtype)  # padded frames are zero, also for the convolution
        alpha = self.cif(x, valid)
        fired = integrate_and_fire(
            x, alpha, valid, threshold=self.config.cif_threshold, target_lengths=target_lengths,
            tail_threshold=self.config.cif_tail_threshold,
        )
        k = fired.tokens.shape[1]
        if k > self.config.max_tokens:
            raise ShapeError(
                f"{type(self).__name__}: CIF fired {k} tokens for one item, more than max_tokens={self.config.max_tokens}"
            )
        h = self.in_proj(fired.tokens.to(features.dtype)) + self.position_embeddings.weight[:k][None]
        attn_mask = key_mask(fired.mask)
        for layer in self.layers:
            h = layer(h, attn_mask)
        out = self.adapter(self.norm(h)) * fired.mask[..., None]
        aux = {"cif_alpha_sum": fired.alpha_sum, "cif_tokens": fired.mask.sum(1)}
        if target_lengths is not None:
            aux["cif_quantity"] = (fired.alpha_sum - target_lengths.to(fired.alpha_sum)).abs().mean()
        mask = fired.mask
        if self.prompt is not None:
            b = out.shape[0]
            out = torch.cat([self.prompt.to(out.dtype)[None].expand(b, -1, -1), out], dim=1)
            mask = torch.cat([mask.new_ones(b, self.config.prompt_tokens), mask], dim=1)
        return BridgeOutput(out, mask, aux)
