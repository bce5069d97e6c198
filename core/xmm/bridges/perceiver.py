"""Flamingo's perceiver resampler (Alayrac et al., 2022) and ChatBridge's shared form of it.

A fixed set of learnable latents ``[Q, dim]`` attends, layer after layer, to the concatenation ``[media; latents]``
(keys and values from both, queries from the latents; pre-LayerNorm on each; no biases), followed by a feed-forward;
a final LayerNorm and an adapter give ``[B, Q, d_llm]``. Learned frame embeddings mark the frames of a video and
media-time embeddings the media items of one input, as in Flamingo.

Inputs: ``[B, T, D]`` (one media item; with ``num_frames = F`` in the config its ``T`` tokens are ``F`` frames of ``T / F``
tokens, frame-major), ``[B, F, T, D]`` (frames given explicitly) or ``[B, M, F, T, D]`` (``M`` media items, each resampled
to its own latents: the output is ``[B, M * Q, d_llm]``). Masks have the same leading shape (``[B, T]``, ``[B, F, T]``,
``[B, M, F, T]``).

ChatBridge: with ``modalities`` the one resampler keeps one latent set per modality (a ``ParameterDict``) and serves them
all; ``forward(..., modality=...)`` picks the set. ``input_dims`` gives modalities whose encoder width differs from
``input_dim`` an input projection of their own.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from xmm.bridges._frozen import offset_norm_projections
from xmm.bridges._layers import attend, check_modality_names, make_query_sets, merge_heads, select_queries, split_heads
from xmm.bridges._registry import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput
from xmm.errors import CheckpointError, ShapeError


class PerceiverConfig(BridgeConfig):
    """Flamingo's defaults: depth 6, 8 heads of 64, 64 latents, feed-forward x4."""

    type: Literal["perceiver"] = "perceiver"
    dim: int | None = Field(None, gt=0, description="resampler width; default output_dim")
    depth: int = Field(6, gt=0)
    heads: int = Field(8, gt=0)
    dim_head: int = Field(64, gt=0)
    num_latents: int = Field(64, gt=0, description="Q, latents per media item")
    ff_mult: int = Field(4, gt=0)
    num_frames: int = Field(1, gt=0, description="frames laid out frame-major in a [B, T, D] input")
    max_frames: int = Field(1, gt=0, description="frame embeddings (Flamingo's frame_embs) exist when > 1")
    max_media: int = Field(1, gt=0, description="media-time embeddings: media items per input, at most")
    modalities: list[str] = Field(default_factory=list, description="ChatBridge: one latent set per modality")
    input_dims: dict[str, int] = Field(default_factory=dict, description="encoder width per modality, when not input_dim")

    @field_validator("modalities")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return check_modality_names(v)

    @model_validator(mode="after")
    def _consistent(self) -> PerceiverConfig:
        if self.num_frames > self.max_frames:
            raise ValueError(f"num_frames {self.num_frames} exceeds max_frames {self.max_frames}")
        stray = sorted(set(self.input_dims) - set(self.modalities))
        if stray:
            raise ValueError(f"input_dims names modalities {stray} that are not in modalities {self.modalities}")
        if any(w <= 0 for w in self.input_dims.values()):
            raise ValueError(f"input_dims must be positive, got {self.input_dims}")
        return self

    @property
    def width(self) -> int:
        return self.dim or self.output_dim


class PerceiverAttention(nn.Module):
    """Latents attend to ``[media; latents]``; LayerNorm on both, bias-free projections."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self, x: torch.Tensor | None, latents: torch.Tensor, mask: torch.Tensor | None, media_kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x ``[N, S, dim]`` (or its keys/values ``media_kv [N, S, 2*inner]``), latents ``[N, Q, dim]``, mask
        ``[N, 1, 1, S + Q]`` -> ``[N, Q, dim]``."""
        n = latents.shape[0]
        lat = self.norm_latents(latents)
        if media_kv is None:
            assert x is not None
            q = split_heads(self.to_q(lat), self.heads)
            kv = self.to_kv(torch.cat([self.norm_media(x), lat], dim=1))
        else:
            # the latents' queries, keys and values in one matmul (the media's keys/values come precomputed)
            qkv = F.linear(lat, torch.cat([self.to_q.weight, self.to_kv.weight], dim=0))
            inner = self.to_q.out_features
            q = split_heads(qkv[..., :inner], self.heads)
            kv = torch.cat([media_kv.to(qkv.dtype), qkv[..., inner:]], dim=1)
        k, v = kv.view(n, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.to_out(merge_heads(attend(q, k, v, mask)))


class PerceiverFeedForward(nn.Module):
    """``LayerNorm -> Linear -> GELU -> Linear`` (bias-free), width x ``mult`` inside."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, heads, dim_head)
        self.ff = PerceiverFeedForward(dim, ff_mult)

    def forward(
        self, x: torch.Tensor | None, latents: torch.Tensor, mask: torch.Tensor | None, media_kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        latents = latents + self.attn(x, latents, mask, media_kv)
        return latents + self.ff(latents)


def _projection(width: int, dim: int) -> nn.Module:
    return nn.Identity() if width == dim else nn.Linear(width, dim)


@register_bridge("perceiver")
class PerceiverBridge(Bridge):
    """Media ``[B, (M,) (F,) T, D_enc]`` -> ``[B, M * Q, d_llm]`` through a perceiver resampler."""

    config_class = PerceiverConfig
    config: PerceiverConfig

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__(config)
        dim = config.width
        self.in_proj = _projection(config.input_dim, dim)
        self.in_projs = nn.ModuleDict({m: _projection(w, dim) for m, w in config.input_dims.items()})
        self.frame_embs = nn.Parameter(torch.randn(config.max_frames, dim)) if config.max_frames > 1 else None
        self.media_time_embs = nn.Parameter(torch.randn(config.max_media, dim))
        self.queries = make_query_sets(config.modalities, config.num_latents, dim, std=1.0)
        self.layers = nn.ModuleList(
            PerceiverLayer(dim, config.heads, config.dim_head, config.ff_mult) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = _projection(dim, config.output_dim)

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> PerceiverConfig:
        # dim = input_dim: no input projection, so frozen features take the fused media path
        return PerceiverConfig(
            input_dim=input_dim, output_dim=output_dim, dim=input_dim, depth=2, heads=2, dim_head=16, num_latents=4
        )

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int:
        """Q per media item (an ``[B, M, F, T, D]`` input gives ``M * Q``)."""
        return self.config.num_latents

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None
    ) -> BridgeOutput:
        """features ``[B, T, D]`` / ``[B, F, T, D]`` / ``[B, M, F, T, D]`` (+ mask without D) -> ``[B, M*Q, d_llm]``."""
        latents0 = select_queries(self.queries, modality, type(self).__name__)
        x, valid = self._layout(features, mask, modality)
        b, m, f, t, _ = x.shape
        proj = self.in_projs[modality] if modality in self.in_projs else self.in_proj
        n, q = b * m, latents0.shape[0]
        attn_mask = None
        if mask is not None:
            flat = valid.reshape(n, f * t)
            attn_mask = torch.cat([flat, flat.new_ones(n, q)], dim=1)[:, None, None, :]
        latents = latents0[None].expand(n, -1, -1)
        offsets = self.media_time_embs[:m, None, :]  # [M, 1, dim] -> [M, F, dim] with the frame embeddings
        if self.frame_embs is not None:
            offsets = offsets + self.frame_embs[None, :f]
        offsets = offsets.expand(m, f, -1)
        if isinstance(proj, nn.Identity) and not features.requires_grad:
            # frozen media: normalise once for all layers, skip the media's input-gradient matmuls (see _frozen.py)
            media = x.reshape(n, f * t, -1)
            per_item = offsets[None].expand(b, m, f, -1).reshape(n, f, -1)
            eps = self.layers[0].attn.norm_media.eps
            kvs = offset_norm_projections(
                media, per_item, eps,
                [(la.attn.norm_media.weight, la.attn.norm_media.bias, la.attn.to_kv.weight) for la in self.layers],
            )
            for layer, kv in zip(self.layers, kvs):
                latents = layer(None, latents, attn_mask, kv)
        else:
            h = (proj(x) + offsets[None, :, :, None, :].to(x.dtype)).reshape(n, f * t, -1)
            for layer in self.layers:
                latents = layer(h, latents, attn_mask)
        out = self.out_proj(self.norm(latents)).reshape(b, m * q, -1)
        item_valid = valid.reshape(b, m, f * t).any(dim=-1)  # a media slot with no token gives masked latents
        return BridgeOutput(out, item_valid[:, :, None].expand(b, m, q).reshape(b, m * q))

    def _layout(
        self, features: torch.Tensor, mask: torch.Tensor | None, modality: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check and reshape to ``[B, M, F, T, D]`` features and ``[B, M, F, T]`` bool mask."""
        cfg = self.config
        width = cfg.input_dims.get(modality, cfg.input_dim) if modality else cfg.input_dim
        name = type(self).__name__
        shapes = f"[B, T, {width}], [B, F, T, {width}] or [B, M, F, T, {width}]"
        if features.dim() not in (3, 4, 5) or features.shape[-1] != width:
            raise ShapeError(f"{name} expects features of shape {shapes}, got {tuple(features.shape)}")
        if mask is not None and mask.shape != features.shape[:-1]:
            raise ShapeError(f"{name} expects a mask of shape {tuple(features.shape[:-1])} (features without D), got {tuple(mask.shape)}")
        valid = torch.ones(features.shape[:-1], dtype=torch.bool, device=features.device) if mask is None else mask.bool()
        if features.dim() == 3:
            b, t, d = features.shape
            f = cfg.num_frames
            if t % f:
                raise ShapeError(f"{name} with num_frames={f} expects [B, T, {width}] with T a multiple of {f}, got T={t}")
            features, valid = features.view(b, 1, f, t // f, d), valid.view(b, 1, f, t // f)
        elif features.dim() == 4:
            features, valid = features.unsqueeze(1), valid.unsqueeze(1)
        _, m, f, _, _ = features.shape
        if f > 1 and f > cfg.max_frames:
            raise ShapeError(f"{name} has frame embeddings for max_frames={cfg.max_frames} frames, got {f} frames")
        if m > cfg.max_media:
            raise ShapeError(f"{name} has media-time embeddings for max_media={cfg.max_media} media items, got {m}")
        return features, valid

    def load_flamingo_pytorch_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the weights of ``flamingo_pytorch.PerceiverResampler`` (same dim, depth, heads, latents) strictly."""
        if len(self.queries) != 1 or self.frame_embs is not None:
            raise CheckpointError("flamingo-pytorch's resampler has one latent set and no frame embeddings")
        ours: dict[str, torch.Tensor] = {}
        media = state.get("media_pos_emb")
        if media is None or media.dim() != 3 or media.shape[0] < self.config.max_media:
            got = None if media is None else tuple(media.shape)
            raise CheckpointError(f"flamingo-pytorch state dict: media_pos_emb must be [>= {self.config.max_media}, 1, dim], got {got}")
        ours["media_time_embs"] = media[: self.config.max_media, 0]
        ours[f"queries.{next(iter(self.queries))}"] = state["latents"]
        names = {"0.norm_media": "attn.norm_media", "0.norm_latents": "attn.norm_latents", "0.to_q": "attn.to_q",
                 "0.to_kv": "attn.to_kv", "0.to_out": "attn.to_out", "1.0": "ff.norm", "1.1": "ff.fc1", "1.3": "ff.fc2"}
        for key, value in state.items():
            if key.startswith("layers."):
                _, i, rest = key.split(".", 2)
                mod, _, part = rest.rpartition(".")
                if mod not in names:
                    raise CheckpointError(f"flamingo-pytorch state dict: unexpected '{key}'")
                ours[f"layers.{i}.{names[mod]}.{part}"] = value
            elif key.startswith("norm."):
                ours[key] = value
            elif key not in ("latents", "media_pos_emb"):
                raise CheckpointError(f"flamingo-pytorch state dict: unexpected '{key}'")
        own = self.state_dict()
        missing = sorted(k for k in own if k not in ours and not k.startswith(("in_proj", "out_proj")))
        if missing:
            raise CheckpointError(f"flamingo-pytorch state dict lacks {missing[:5]}")
        for k, v in ours.items():
            if k not in own or own[k].shape != v.shape:
                want = tuple(own[k].shape) if k in own else None
                raise CheckpointError(f"flamingo-pytorch state dict: '{k}' has shape {tuple(v.shape)}, this resampler expects {want}")
        with torch.no_grad():
            for k, v in ours.items():
                own[k].copy_(v)
