"""LayerNorm + linear projections of *frozen* encoder features, without the input gradient nobody needs.

Bridges normalise the frozen encoder output with a trainable LayerNorm (BLIP-2's ``ln_vision``, Flamingo's
``norm_media``) and then project it, often several times (one key/value projection per cross-attention layer). Plain
autograd then back-propagates into the normalised features just to reach the LayerNorm's ``gamma``/``beta``, which costs a
full ``[N, O] x [O, D]`` matmul per projection. Because ``x_hat = (x - mean) / std`` of a frozen input holds no
parameter, ``y = (x_hat * gamma + beta) W^T + b`` has cheap closed-form gradients: with ``G = dy^T x_hat`` (the matmul
the weight gradient needs anyway) ``dW = G * gamma + s beta^T``, ``dgamma = sum_o W * G``, ``dbeta = s W`` and
``db = s`` where ``s = sum_t dy``. That removes one of the three matmuls of every projection of the media.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer would compute in for ``x`` (the autocast dtype when autocast is on)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def normalize_frozen(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / std`` over the last axis (no affine), in fp32, cast to the compute dtype. ``x`` must be frozen."""
    with torch.autocast(x.device.type, enabled=False):
        xhat = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)
    return xhat.to(compute_dtype(x))


class _AffineLinear(torch.autograd.Function):
    """``y = (x_hat * gamma + beta) @ W^T + b`` for a constant ``x_hat`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, xhat, gamma, beta, weight, bias):  # type: ignore[override]
        # fold the affine into the projection: y = x_hat @ (W * gamma)^T + (W beta + b)
        with torch.autocast(xhat.device.type, enabled=False):
            w_eff = (weight * gamma).to(xhat.dtype)
            b_eff = weight @ beta
            if bias is not None:
                b_eff = b_eff + bias
            y = F.linear(xhat, w_eff, b_eff.to(xhat.dtype))
        ctx.save_for_backward(xhat, gamma, beta, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        xhat, gamma, beta, weight = ctx.saved_tensors
        with torch.autocast(xhat.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(xhat.dtype)
            big = (g.t() @ xhat.reshape(-1, xhat.shape[-1])).to(weight.dtype)  # [O, D]: the one matmul
            s = g.sum(0, dtype=torch.float32).to(weight.dtype)  # [O]
            d_weight = big * gamma + s[:, None] * beta[None, :]
            d_gamma = (big * weight).sum(0)
            d_beta = s @ weight
        return None, d_gamma, d_beta, d_weight, (s if ctx.has_bias else None)


def norm_linear(
    xhat: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``[..., D]`` normalised frozen features -> ``[..., O]`` = ``LayerNorm_affine(x) @ W^T + b``."""
    return _AffineLinear.apply(xhat, gamma, beta, weight, bias)
