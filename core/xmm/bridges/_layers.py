"""Building blocks shared by the bridges: multi-head attention on SDPA, masks, query sets, feed-forwards."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from xmm.errors import ConfigError

DEFAULT_QUERY_SET = "default"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, H*d] -> [B, H, L, d]`` (a view; SDPA accepts the strides)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d] -> [B, L, H*d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, dropout: float = 0.0
) -> torch.Tensor:
    """Scaled dot-product attention over ``[B, H, L, d]``; ``mask`` bool, broadcastable to ``[B, H, Lq, Lk]``, True = attend.

    ``scaled_dot_product_attention`` everywhere except bf16/fp16 on the CPU: there its flash kernel is about twice as
    slow as two low-precision matmuls around an fp32 softmax for the bridges' short query sets (32-64 queries; measured
    with torch 2.11), so that case takes the math form.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.float().softmax(dim=-1).to(v.dtype)
        if dropout:
            probs = F.dropout(probs, dropout)
        return torch.matmul(probs, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, T]`` bool -> ``[B, 1, 1, T]`` for :func:`attend`.

    An item with no valid key would give a row of -inf scores (NaN after softmax); such an item attends to every key
    instead, and the bridge marks its outputs invalid, so the values it sees never matter.
    """
    if mask is None:
        return None
    empty = ~mask.any(dim=-1, keepdim=True)
    return (mask | empty)[:, None, None, :]


def has_tokens(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool -> ``[B]``: True where the item has at least one valid token."""
    return mask.any(dim=-1)


def make_query_sets(modalities: list[str], num: int, dim: int, std: float) -> nn.ParameterDict:
    """One learnable ``[num, dim]`` query set per modality (ChatBridge), or a single ``default`` set."""
    names = modalities or [DEFAULT_QUERY_SET]
    sets = nn.ParameterDict()
    for name in names:
        sets[name] = nn.Parameter(torch.randn(num, dim) * std)
    return sets


def select_queries(sets: nn.ParameterDict, modality: str | None, owner: str) -> torch.Tensor:
    """The ``[Q, D]`` query set for ``modality``; a single-set bridge ignores ``modality``."""
    if DEFAULT_QUERY_SET in sets and len(sets) == 1:
        return sets[DEFAULT_QUERY_SET]
    if modality is None or modality not in sets:
        raise ConfigError(
            f"{owner} keeps one query set per modality {sorted(sets.keys())}; pass modality= one of them, got {modality!r}",
            field="modality",
        )
    return sets[modality]


def check_modality_names(names: list[str]) -> list[str]:
    """Pydantic helper: modality names become parameter names, so they must be plain identifiers and unique."""
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"modality name {name!r} must match [A-Za-z0-9_-]+")
    if len(set(names)) != len(names):
        raise ValueError(f"modality names repeat: {names}")
    return names


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a fused qkv projection (ViT / GroupViT / C-Former blocks)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"width {dim} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, L, D]``, mask bool broadcastable to ``[B, 1, L, L]`` -> ``[B, L, D]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = attend(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.proj(merge_heads(out))


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``[B, Q, D]`` to a context ``[B, T, Dc]`` (fused kv projection)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"width {dim} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = context.shape
        q = split_heads(self.q(x), self.heads)
        k, v = self.kv(context).view(b, t, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(merge_heads(attend(q, k, v, mask)))


class FeedForward(nn.Module):
    """``Linear -> GELU -> Linear`` (the MLP of ViT blocks)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, out or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/ViT initialisation: linear and embedding weights ~ N(0, std), biases 0, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
