"""The LLM's attention during training on the CPU: the math form where torch's CPU flash kernel is slow.

With bf16 autocast on the CPU, ``scaled_dot_product_attention`` runs its flash kernel, whose *backward* costs many
times its forward - at the short sequences of a bridge stage, more than half of an LLM stage's step. Two bf16
matmuls around an fp32 softmax compute the same attention with a far cheaper backward (figures in this folder's
README). A stage therefore switches an LLM that uses transformers' ``sdpa`` attention to :data:`NAME` while it
trains: on the CPU, in bf16/fp16, with gradients on and a score tensor of at most :data:`MATH_BUDGET` elements (the
math form keeps the ``[B, H, Lq, Lk]`` probabilities for the backward, the flash kernel does not) it takes the math
form; every other call (GPUs, fp32, inference, long sequences, paged caches, biases) goes to transformers' own sdpa.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

NAME = "xmm_sdpa_cpu"
MATH_BUDGET = 1 << 24  # elements of one layer's [B, H, Lq, Lk] scores (32 MiB of bf16 probabilities kept for backward)

_registered = False


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """What sdpa would compute in: the autocast dtype when autocast is on (RoPE leaves q/k in fp32), else q's."""
    if torch.is_autocast_enabled(query.device.type):
        return torch.get_autocast_dtype(query.device.type)
    return query.dtype


def _math_applies(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    if query.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    if _compute_dtype(query) not in (torch.bfloat16, torch.float16):
        return False
    if any(kwargs.get(k) is not None for k in ("position_bias", "cache", "softcap", "s_aux", "sinks")):
        return False
    if mask is not None and (mask.dtype != torch.bool or mask.dim() != 4):
        return False
    b, h, lq, _ = query.shape
    return b * h * lq * key.shape[2] <= MATH_BUDGET


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; the math form where it is faster, else ``sdpa_attention_forward``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _math_applies(query, key, attention_mask, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    dtype = _compute_dtype(query)
    b, h, lq, d = query.shape
    kvh, lk = key.shape[1], key.shape[2]
    g = h // kvh  # grouped-query attention: query head kvh_i * g + j reads key/value head kvh_i
    # the g query heads of a key/value head as one [g * Lq] block of rows: no repeated keys/values, no reduction of
    # their gradients over the copies
    q = query.view(b, kvh, g, lq, d).to(dtype, memory_format=torch.contiguous_format).view(b, kvh, g * lq, d)
    k, v = key.to(dtype), value.to(dtype)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = attention_mask
    if mask is None and causal and lq > 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril(lk - lq)[None, None]
    scale = scaling if scaling is not None else d**-0.5
    scores = torch.matmul(q, k.transpose(2, 3)).float().mul_(scale).view(b, kvh, g, lq, lk)
    if mask is not None:
        # a finite floor, as transformers' eager attention: a fully masked (padding) row gets finite, unused outputs
        scores = scores.masked_fill_(~mask[:, :, None], torch.finfo(torch.float32).min)
    probs = scores.softmax(dim=-1).to(dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(b, kvh, g * lq, lk), v).view(b, kvh, g, lq, d)
    return out.permute(0, 3, 1, 2, 4).reshape(b, lq, h, d), None


def _register() -> bool:
    global _registered
    if _registered:
        return True
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # a transformers without the attention interface: keep its sdpa
        return False
    ALL_ATTENTION_FUNCTIONS.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same boolean masks as sdpa
    _registered = True
    return True


def use_training_attention(llm: Any) -> Callable[[], None]:
    """Switch ``llm`` (a transformers model using ``sdpa``) to :data:`NAME`; returns the function that switches back.

    Models with any other attention implementation (eager, flash-attention, a custom one) are left alone.
    """
    config = getattr(llm, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current != "sdpa" or not _register():
        return lambda: None
    config._attn_implementation = NAME

    def restore() -> None:
        if config._attn_implementation == NAME:
            config._attn_implementation = current

    return restore
