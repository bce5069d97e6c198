"""NExT-GPT's concept-grouping input projector: GroupViT grouping blocks (Xu et al., 2022) over encoder tokens.

Each stage appends learnable group tokens to the token sequence, runs transformer blocks over ``[tokens; groups]``, and
then a grouping block assigns every token to exactly one group (hard Gumbel-softmax over the groups, straight-through
gradients) and merges the tokens of each group into a new token. Staged counts (default 64 then 8) aggregate the grid
of features hierarchically into a few concept tokens; an adapter maps them to the LLM width.

Gumbel noise is drawn in training only; in eval the assignment is the arg-max, so the output is deterministic. Padded
tokens are never assigned: their column of the assignment is zeroed, so they neither count in a group nor add to it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xmm.bridges._layers import CrossAttention, FeedForward, TransformerBlock, has_tokens, init_weights, key_mask
from xmm.bridges._registry import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput
from xmm.errors import ShapeError


class ConceptGroupingConfig(BridgeConfig):
    type: Literal["concept-grouping"] = "concept-grouping"
    dim: int = Field(384, gt=0, description="width of the grouping transformer (GroupViT-S: 384)")
    num_heads: int = Field(6, gt=0)
    num_group_tokens: list[int] = Field(default_factory=lambda: [64, 8], description="groups per stage (the last is Q)")
    depths: list[int] = Field(default_factory=lambda: [2, 2], description="transformer blocks per stage, before grouping")
    final_depth: int = Field(1, ge=0, description="blocks over the last stage's concept tokens")
    mlp_ratio: float = Field(4.0, gt=0)
    gumbel: bool = Field(True, description="Gumbel noise on the assignment logits in training")
    tau: float = Field(1.0, gt=0, description="Gumbel-softmax temperature")
    assign_eps: float = Field(1.0, gt=0, description="added to a group's token count when averaging (GroupViT: 1)")
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _stages(self) -> ConceptGroupingConfig:
        if not self.num_group_tokens or len(self.num_group_tokens) != len(self.depths):
            raise ValueError(f"num_group_tokens {self.num_group_tokens} and depths {self.depths} need the same non-zero length")
        if any(g <= 0 for g in self.num_group_tokens) or any(d < 0 for d in self.depths):
            raise ValueError("group counts must be > 0 and depths >= 0")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        return self


class TokenMixer(nn.Module):
    """An MLP along the token axis: ``[B, S_in, C] -> [B, S_out, C]`` (GroupViT's ``MixerMlp``)."""

    def __init__(self, tokens_in: int, hidden: int, tokens_out: int) -> None:
        super().__init__()
        self.mlp = FeedForward(tokens_in, hidden, tokens_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


def hard_assign(logits: torch.Tensor, dim: int, gumbel: bool, tau: float) -> torch.Tensor:
    """One-hot along ``dim`` with straight-through gradients of the (Gumbel-)softmax."""
    if gumbel:
        noise = -torch.empty_like(logits).exponential_().log()
        logits = (logits + noise) / tau
    soft = logits.softmax(dim)
    index = soft.argmax(dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


class AssignAttention(nn.Module):
    """Single-head attention whose weights are a hard assignment of every token to one group."""

    def __init__(self, dim: int, cfg: ConceptGroupingConfig) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.gumbel, self.tau, self.eps = cfg.gumbel, cfg.tau, cfg.assign_eps
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, groups: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """groups ``[B, S, C]``, tokens ``[B, N, C]``, mask ``[B, N]`` -> new tokens ``[B, S, C]``, assignment ``[B, S, N]``."""
        logits = (self.q_proj(groups) @ self.k_proj(x).transpose(1, 2)).float() * self.scale
        assign = hard_assign(logits, dim=-2, gumbel=self.gumbel and self.training, tau=self.tau)
        assign = assign * mask[:, None, :]  # padded tokens join no group
        weights = assign / (assign.sum(dim=-1, keepdim=True) + self.eps)
        v = self.v_proj(x)
        return self.proj(weights.to(v.dtype) @ v), assign


class GroupingBlock(nn.Module):
    """GroupViT's grouping block: mix and refine the group tokens, assign tokens to them, merge."""

    def __init__(self, cfg: ConceptGroupingConfig, num_groups: int) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = TokenMixer(num_groups, dim // 2, num_groups)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        # GroupViT's CrossAttnBlock with post-norm: groups attend to the tokens before the assignment
        self.pre_norm_q = nn.LayerNorm(dim)
        self.pre_norm_k = nn.LayerNorm(dim)
        self.pre_attn = CrossAttention(dim, cfg.num_heads)
        self.pre_norm2 = nn.LayerNorm(dim)
        self.pre_mlp = FeedForward(dim, int(dim * cfg.mlp_ratio))
        self.pre_norm_post = nn.LayerNorm(dim)
        self.assign = AssignAttention(dim, cfg)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = FeedForward(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens ``[B, N, C]`` (mask ``[B, N]``), groups ``[B, S, C]`` -> merged ``[B, S, C]``, assignment ``[B, S, N]``."""
        groups = self.norm_tokens(groups)
        x = self.norm_x(x)
        g = self.norm_post_tokens(self.mlp_inter(groups))
        g = g + self.pre_attn(self.pre_norm_q(g), self.pre_norm_k(x), key_mask(mask))
        g = self.pre_norm_post(g + self.pre_mlp(self.pre_norm2(g)))
        new_x, assign = self.assign(g, x, mask)
        new_x = new_x + g
        return new_x + self.mlp_channels(self.norm_new_x(new_x)), assign


class GroupingStage(nn.Module):
    """Transformer blocks over ``[tokens; group tokens]``, then a grouping block down to ``num_groups`` tokens."""

    def __init__(self, cfg: ConceptGroupingConfig, index: int) -> None:
        super().__init__()
        groups = cfg.num_group_tokens[index]
        self.group_tokens = nn.Parameter(torch.zeros(groups, cfg.dim))
        prev = cfg.num_group_tokens[index - 1] if index > 0 else 0
        # GroupViT: the previous stage's group tokens, mixed down to this stage's count, seed this stage's groups
        self.group_projector = (
            nn.Sequential(nn.LayerNorm(cfg.dim), TokenMixer(prev, cfg.dim // 2, groups)) if prev else None
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depths[index])
        )
        self.grouping = GroupingBlock(cfg, groups)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, prev_groups: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> new tokens ``[B, S, C]``, this stage's group tokens after the blocks, assignment ``[B, S, N]``."""
        b, n, _ = x.shape
        groups = self.group_tokens[None].expand(b, -1, -1).to(x.dtype)
        if self.group_projector is not None and prev_groups is not None:
            groups = groups + self.group_projector(prev_groups)
        h = torch.cat([x, groups], dim=1)
        keys = key_mask(torch.cat([mask, mask.new_ones(b, groups.shape[1])], dim=1))
        for block in self.blocks:
            h = block(h, keys)
        x, groups = h[:, :n], h[:, n:]
        new_x, assign = self.grouping(x, groups, mask)
        return new_x, groups, assign


@register_bridge("concept-grouping")
class ConceptGroupingBridge(Bridge):
    """Encoder tokens ``[B, T, D_enc]`` -> ``[B, G_last, d_llm]`` concept tokens."""

    config_class = ConceptGroupingConfig
    config: ConceptGroupingConfig

    def __init__(self, config: ConceptGroupingConfig) -> None:
        super().__init__(config)
        self.in_proj = nn.Linear(config.input_dim, config.dim)
        self.stages = nn.ModuleList(GroupingStage(config, i) for i in range(len(config.num_group_tokens)))
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.final_depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.out_proj = nn.Linear(config.dim, config.output_dim)
        init_weights(self, 0.02)
        for stage in self.stages:
            nn.init.trunc_normal_(stage.group_tokens, std=0.02)

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> ConceptGroupingConfig:
        return ConceptGroupingConfig(
            input_dim=input_dim, output_dim=output_dim, dim=32, num_heads=2, num_group_tokens=[6, 3], depths=[1, 1]
        )

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int:
        return self.config.num_group_tokens[-1]

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None
    ) -> BridgeOutput:
        """features ``[B, T, D_enc]``, mask ``[B, T]`` -> ``[B, G_last, d_llm]``; an item without tokens is masked out."""
        return self.forward_with_assignments(features, mask)[0]

    def forward_with_assignments(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[BridgeOutput, list[torch.Tensor]]:
        """Also return each stage's hard assignment ``[B, S_i, N_i]`` (one-hot over the groups, straight-through)."""
        valid = self.check_input(features, mask)
        if features.shape[1] == 0:
            raise ShapeError(f"{type(self).__name__} expects features [B, T, {self.config.input_dim}] with T >= 1, got T = 0")
        x = self.in_proj(features * valid[..., None].to(features.dtype))  # padded values never enter
        tokens_mask = valid
        prev: torch.Tensor | None = None
        assignments = []
        for stage in self.stages:
            x, prev, assign = stage(x, tokens_mask, prev)
            assignments.append(assign)
            tokens_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for block in self.blocks:
            x = block(x)
        out = self.out_proj(self.norm(x))
        item = has_tokens(valid)
        return BridgeOutput(out, item[:, None].expand(-1, out.shape[1])), assignments
