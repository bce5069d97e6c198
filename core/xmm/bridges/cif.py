"""Continuous integrate-and-fire (Dong & Xu, ICASSP 2020): frame-level features to token-level features.

A weight ``alpha_t`` in (0, 1) is predicted for every frame. Scanning the frames, the weights are integrated; each time the
integral reaches the threshold (1.0) a token fires, made of the frames' features weighted by the part of their ``alpha``
that fell into it (a frame that crosses the threshold is split between two tokens). In training the weights are scaled
so that they sum to the target length (the number of text tokens) and the quantity loss ``|sum(alpha) - target|`` teaches
the predictor to count. At inference a last partial token fires when its integral reaches ``tail_threshold``.

The scan is computed at once: with ``c_t`` the running integral (in units of the threshold), token ``k`` takes from frame
``t`` the overlap of ``[c_{t-1}, c_t]`` with ``[k, k + 1]``, which is exactly what the sequential scan accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xmm.errors import ShapeError


@dataclass
class CIFOutput:
    """tokens ``[B, K, D]`` (zero past each item's count); mask ``[B, K]``; alpha_sum ``[B]`` (before any scaling)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    alpha_sum: torch.Tensor


class CIFWeightPredictor(nn.Module):
    """``alpha = sigmoid(Linear(ReLU(Conv1d_k(h))))`` per frame, as in the CIF paper; padded frames get 0."""

    def __init__(self, dim: int, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, channels, kernel_size, padding=kernel_size // 2)
        self.proj = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, D]`` (padded frames zero), mask ``[B, T]`` -> alpha ``[B, T]`` fp32."""
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return torch.sigmoid(self.proj(h).squeeze(-1).float()) * mask


def integrate_and_fire(
    features: torch.Tensor,
    alpha: torch.Tensor,
    mask: torch.Tensor,
    *,
    threshold: float = 1.0,
    target_lengths: torch.Tensor | None = None,
    tail_threshold: float = 0.5,
) -> CIFOutput:
    """features ``[B, T, D]``, alpha ``[B, T]`` (0 on padding), mask ``[B, T]`` -> token-level :class:`CIFOutput`.

    With ``target_lengths [B]`` the weights are scaled to sum to ``target * threshold`` and exactly ``target`` tokens come
    out; without, ``floor(sum / threshold)`` tokens fire, plus the tail when its integral is at least ``tail_threshold``.
    """
    b, t, _ = features.shape
    with torch.autocast(features.device.type, enabled=False):
        alpha = alpha.float() * mask
        alpha_sum = alpha.sum(dim=1)
        if target_lengths is not None:
            if target_lengths.shape != (b,):
                raise ShapeError(f"target_lengths must have shape [B] = [{b}], got {tuple(target_lengths.shape)}")
            if bool((target_lengths < 0).any()):
                raise ShapeError(f"target_lengths must be >= 0, got {target_lengths.tolist()}")
            target = target_lengths.to(alpha.device).float()
            alpha = alpha * (target * threshold / alpha_sum.clamp_min(1e-6))[:, None]
            counts = target_lengths.to(alpha.device).long()
        else:
            total = alpha_sum / threshold
            whole = total.floor()
            counts = (whole + (total - whole >= tail_threshold).float()).long()
        c = alpha.cumsum(dim=1) / threshold  # running integral after each frame, in tokens
        prev = c - alpha / threshold
        k_max = max(int(counts.max()) if b else 0, 1)  # at least one (masked) slot keeps shapes non-empty
        k = torch.arange(k_max, device=alpha.device, dtype=alpha.dtype)
        # part of frame t's weight that falls in token k: |[prev_t, c_t] ∩ [k, k+1]|, in units of alpha
        weights = (torch.minimum(c[:, :, None], k + 1) - torch.maximum(prev[:, :, None], k)).clamp_min(0) * threshold
        token_mask = torch.arange(k_max, device=alpha.device)[None, :] < counts[:, None]
        weights = weights * token_mask[:, None, :]
        tokens = torch.einsum("btk,btd->bkd", weights, features.float())
    return CIFOutput(tokens, token_mask, alpha_sum)
