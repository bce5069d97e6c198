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


def compute_dtype(x: torch.Tensor, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype a linear layer computes in: the autocast dtype when autocast is on, else the parameters' dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return param_dtype


def normalize_frozen(x: torch.Tensor, eps: float, param_dtype: torch.dtype) -> torch.Tensor:
    """``(x - mean) / std`` over the last axis (no affine), in fp32, cast to the compute dtype. ``x`` must be frozen."""
    with torch.autocast(x.device.type, enabled=False):
        xhat = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)
    return xhat.to(compute_dtype(x, param_dtype))


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
            y = F.linear(xhat, w_eff) + b_eff.to(xhat.dtype)  # matmul + add: faster than a low-precision addmm on CPU
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


class _OffsetNormProjections(torch.autograd.Function):
    """Per layer ``l``: ``y_l = LayerNorm_l(media + offset) @ W_l^T`` for frozen media and trainable per-group offsets.

    ``media [N, G*T, D]`` holds ``G`` groups (frames) of ``T`` tokens; ``offsets [N, G, D]`` is added to every token of its
    group (Flamingo's frame and media-time embeddings). The normalisation is shared by all layers (only the affine
    differs), and the offsets' gradient, a sum over each group's tokens of the LayerNorm input gradient, is assembled
    from per-token scalars and group sums: no ``[N*S, O] x [O, D]`` input-gradient matmul is needed (module docstring).
    """

    @staticmethod
    def forward(ctx, media, offsets, eps, dtype, *params):  # type: ignore[override]
        n, s, d = media.shape
        g = offsets.shape[1]
        with torch.autocast(media.device.type, enabled=False):
            x = (media.float().view(n, g, s // g, d) + offsets.float()[:, :, None]).view(n, s, d)
            xhat, _, rstd = torch.native_layer_norm(x, [d], None, None, eps)  # one pass, and 1/std for backward
            xhat = xhat.to(dtype)
            outs = []
            for i in range(0, len(params), 3):
                gamma, beta, weight = params[i : i + 3]
                # bias added apart: a low-precision addmm with a broadcast bias is slower than matmul + add on CPU
                outs.append(F.linear(xhat, (weight * gamma).to(dtype)) + (weight @ beta).to(dtype))
        ctx.save_for_backward(xhat, rstd, *params, *outs)
        ctx.shape = (n, s, d, g)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        n, s, d, g = ctx.shape
        xhat, rstd, *rest = ctx.saved_tensors
        k = len(grads)
        params, outs = rest[: 3 * k], rest[3 * k :]
        need_offsets = ctx.needs_input_grad[1]
        x2 = xhat.reshape(n * s, d)
        r = rstd.reshape(n * s)
        grad_params: list[torch.Tensor | None] = []
        with torch.autocast(xhat.device.type, enabled=False):
            if need_offsets:
                a = x2.new_zeros(n * g, d, dtype=torch.float32)
                mean_term = x2.new_zeros(n * s, dtype=torch.float32)
                proj_term = x2.new_zeros(n * s, dtype=torch.float32)
            for layer, grad in enumerate(grads):
                gamma, beta, weight = params[3 * layer : 3 * layer + 3]
                if grad is None:
                    grad_params += [None, None, None]
                    continue
                g2 = grad.reshape(n * s, -1).to(x2.dtype)
                big = (g2.t() @ x2).to(weight.dtype)  # [O, D]: the one matmul
                ssum = g2.sum(0, dtype=torch.float32).to(weight.dtype)
                grad_params += [(big * weight).sum(0), ssum @ weight, big * gamma + ssum[:, None] * beta[None, :]]
                if need_offsets:
                    w_eff = weight * gamma
                    # LayerNorm input gradient of token t: rstd_t (dxhat_t - mean(dxhat_t) - xhat_t mean(dxhat_t xhat_t))
                    # with dxhat_t = g_t W_eff; summed over a group, only these per-token scalars and sums are needed.
                    # Each is one pass over g_t, in the compute dtype with fp32 accumulation.
                    vecs = torch.stack([w_eff.sum(1), weight @ beta], dim=1).to(g2.dtype)  # [O, 2]
                    mv = (g2 @ vecs).float()  # g_t . rowsum(W_eff), g_t . b_eff
                    dots = (g2 * outs[layer].reshape(n * s, -1)).sum(-1, dtype=torch.float32)  # g_t . (z_t + b_eff)
                    mean_term += mv[:, 0]
                    proj_term += dots - mv[:, 1]  # g_t . z_t with z_t = xhat_t W_eff^T
                    grouped = torch.bmm(r.view(n * g, 1, s // g).to(g2.dtype), g2.view(n * g, s // g, -1))
                    a += grouped.view(n * g, -1).float() @ w_eff.float()
            d_offsets = None
            if need_offsets:
                m = (r * mean_term / d).view(n * g, s // g).sum(1)
                p = ((r * proj_term / d)[:, None] * x2.float()).view(n * g, s // g, d).sum(1)
                d_offsets = (a - m[:, None] - p).view(n, g, d)
        return (None, d_offsets, None, None, *grad_params)


def offset_norm_projections(
    media: torch.Tensor,
    offsets: torch.Tensor,
    eps: float,
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, ...]:
    """Frozen ``media [N, G*T, D]`` + ``offsets [N, G, D]`` -> one ``[N, G*T, O_l]`` per ``(gamma, beta, W)`` in ``layers``.

    Equal to ``[F.linear(F.layer_norm(media + offsets_per_token, (D,), gamma, beta, eps), W) for each layer]`` (bias-free),
    in the autocast dtype when autocast is on.
    """
    flat = [t for layer in layers for t in layer]
    return _OffsetNormProjections.apply(media, offsets, eps, compute_dtype(media, flat[-1].dtype), *flat)
