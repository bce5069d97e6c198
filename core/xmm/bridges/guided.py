"""``guided-mlp``: LLaVA's per-token MLP plus a few *instruction-guided* tokens.

A small frozen LLM copies a fact it is handed easily, but finding one among many media tokens ("the colour of the
circle", "is the battery low?") takes it thousands of steps to learn through a bridge. InstructBLIP gives its
Q-Former the instruction for this reason; stacked-attention VQA (Yang et al., 2016) does the same with one attention
hop. Here the bridge reads the LLM's own (frozen) embeddings of the question in the item's chat turn, attends over
the input tokens with ``guided_tokens`` queries made from it, and appends the pooled results after the usual
per-token outputs. Learned input-position vectors in the keys and values let a pooled token say *where* it looked.
Without a question (a caption turn) learned default queries take its place.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from xmm.bridges._registry import register_bridge
from xmm.bridges.base import BridgeOutput
from xmm.bridges.linear import MLPBridge, MLPConfig
from xmm.errors import ShapeError


class GuidedMLPConfig(MLPConfig):  # type: ignore[override]
    type: Literal["guided-mlp"] = "guided-mlp"  # type: ignore[assignment]
    guided_tokens: int = Field(2, ge=1, le=32, description="instruction-guided tokens appended per item")
    attn_dim: int = Field(128, gt=0, description="width of the guided attention (queries, keys, values)")
    max_inputs: int = Field(64, ge=1, description="most input tokens (after pooling) an item may have")
    context_dim: int | None = Field(None, gt=0, description="width of the question embeddings (default: output_dim)")


@register_bridge("guided-mlp")
class GuidedMLPBridge(MLPBridge):
    """``[B, T, D_enc]`` + question ``[B, L, d_llm]`` -> ``[B, T' * k + G, d_llm]`` (``G = guided_tokens``)."""

    config_class = GuidedMLPConfig
    uses_context: ClassVar[bool] = True
    config: GuidedMLPConfig

    def __init__(self, config: GuidedMLPConfig) -> None:
        super().__init__(config)
        a, g = config.attn_dim, config.guided_tokens
        dc = config.context_dim or config.output_dim
        self.in_norm = nn.LayerNorm(config.projected_dim)
        self.key = nn.Linear(config.projected_dim, a)
        self.value = nn.Linear(config.projected_dim, a)
        self.key_position = nn.Parameter(torch.randn(config.max_inputs, a) * 0.02)
        self.value_position = nn.Parameter(torch.randn(config.max_inputs, a) * 0.02)
        # LLM input embeddings are on another scale than the bridge's activations; normalise before reading them
        self.context_norm = nn.LayerNorm(dc)
        self.context_pick = nn.Parameter(torch.randn(g, dc) * 0.02)  # which question words each query listens to
        self.query = nn.Linear(dc, a)
        # what was asked joins what was seen (as stacked-attention VQA adds the question vector before its read-out):
        # the same place answers "what colour?" and "what shape?" differently
        self.context_value = nn.Linear(dc, a)
        self.default_query = nn.Parameter(torch.randn(g, a) * 0.02)
        hidden = config.hidden_dim or config.output_dim
        self.out = nn.Sequential(nn.LayerNorm(a), nn.Linear(a, hidden), nn.GELU(), nn.Linear(hidden, config.output_dim))

    def _queries(self, context: torch.Tensor | None, context_mask: torch.Tensor | None, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per guided token, a query ``[B, G, A]`` from an attention-pooled summary of the question, and that summary
        mapped into the value space ``[B, G, A]`` (None without a question)."""
        q = self.default_query.unsqueeze(0).expand(b, -1, -1)
        if context is None:
            return q, None
        ctx = self.context_norm(context)
        scores = torch.einsum("gd,bld->bgl", self.context_pick, ctx) / math.sqrt(ctx.shape[-1])
        cmask = context_mask if context_mask is not None else torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
        scores = scores.masked_fill(~cmask[:, None, :], float("-inf"))
        has_text = cmask.any(dim=1)  # items whose turn has no text keep the default queries
        weights = torch.softmax(scores.masked_fill(~has_text[:, None, None], 0.0), dim=-1)
        pooled = torch.einsum("bgl,bld->bgd", weights, ctx)
        on = has_text[:, None, None].to(pooled.dtype)
        return q + self.query(pooled) * on, self.context_value(pooled) * on

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int | None:
        """The MLP's per-token outputs plus ``guided_tokens``."""
        base = super().num_output_tokens(num_input_tokens, modality=modality)
        return None if base is None else base + self.config.guided_tokens

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        modality: str | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> BridgeOutput:
        x, mask = self.reduce(features, mask)
        base = self.project(x, mask)
        b, t, _ = x.shape
        if t > self.config.max_inputs:
            raise ShapeError(f"GuidedMLPBridge: {t} input tokens but max_inputs = {self.config.max_inputs}")
        if context is not None and (context.shape[0] != b or context.shape[-1] != self.context_norm.normalized_shape[0]):
            raise ShapeError(f"GuidedMLPBridge: context must be [B={b}, L, {self.context_norm.normalized_shape[0]}], "
                             f"got {list(context.shape)}")
        h = self.in_norm(x)
        keys = self.key(h) + self.key_position[:t]
        values = self.value(h) + self.value_position[:t]
        q, asked = self._queries(context, context_mask, b)
        att = torch.einsum("bga,bta->bgt", q, keys) / math.sqrt(keys.shape[-1])
        # an item with no valid token attends nowhere (its guided tokens are masked out with it), not to NaN
        has_input = mask.any(dim=1)
        blocked = ~mask[:, None, :] & has_input[:, None, None]
        att = torch.softmax(att.masked_fill(blocked, float("-inf")), dim=-1)
        seen = torch.einsum("bgt,bta->bga", att, values)
        guided = self.out(seen if asked is None else seen + asked)
        g_mask = has_input[:, None].expand(b, guided.shape[1])
        return BridgeOutput(torch.cat([base.embeds, guided], dim=1), torch.cat([base.mask, g_mask], dim=1),
                            aux={"guided_attention": att})
