"""Perceiver resampler: equal to flamingo-pytorch's after import; frames, media, and ChatBridge's shared form."""

from __future__ import annotations

import pytest
import torch
from xmm.bridges.perceiver import PerceiverBridge, PerceiverConfig
from xmm.errors import CheckpointError, ConfigError, ShapeError


def small(**kw) -> PerceiverBridge:
    torch.manual_seed(0)
    base = dict(input_dim=32, output_dim=32, depth=2, heads=4, dim_head=8, num_latents=6)
    return PerceiverBridge(PerceiverConfig(**{**base, **kw})).eval()


def test_matches_flamingo_pytorch_resampler():
    flamingo = pytest.importorskip("flamingo_pytorch")
    torch.manual_seed(0)
    ref = flamingo.PerceiverResampler(dim=32, depth=2, dim_head=8, heads=4, num_latents=6, num_media_embeds=3).eval()
    ours = small(max_media=3)
    ours.load_flamingo_pytorch_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 10, 32)  # [B, M, T, D]: three media items
    with torch.no_grad():
        want = ref(x)  # [B, M, Q, D]
        got = ours(x[:, :, None])  # ours takes [B, M, F, T, D]
    torch.testing.assert_close(got.embeds, want.reshape(2, 18, 32), atol=1e-5, rtol=0)
    assert got.mask.all()
    bad = dict(ref.state_dict())
    bad["layers.0.0.to_q.weight"] = bad["layers.0.0.to_q.weight"][:, :16]
    with pytest.raises(CheckpointError, match="to_q.weight"):
        ours.load_flamingo_pytorch_state_dict(bad)


def test_frame_layouts_agree_and_frames_are_told_apart():
    bridge = small(num_frames=3, max_frames=4)
    assert bridge.frame_embs is not None and bridge.frame_embs.shape == (4, 32)
    x = torch.randn(2, 3, 5, 32)
    flat = bridge(x.reshape(2, 15, 32))  # frame-major [B, F*T, D] with num_frames=3
    framed = bridge(x)  # [B, F, T, D]
    torch.testing.assert_close(flat.embeds, framed.embeds)
    swapped = bridge(x[:, [1, 0, 2]])  # same tokens, other frame order: the frame embeddings see it
    assert not torch.allclose(swapped.embeds, framed.embeds)
    # the same with an input projection (encoder width 20): the plain path lays frames out alike
    projected = small(input_dim=20, num_frames=3, max_frames=4)
    y = torch.randn(2, 3, 5, 20)
    torch.testing.assert_close(projected(y.reshape(2, 15, 20)).embeds, projected(y).embeds)
    with pytest.raises(ShapeError, match="T a multiple of 3"):
        bridge(torch.randn(2, 14, 32))
    with pytest.raises(ShapeError, match="max_frames=4"):
        bridge(torch.randn(2, 5, 3, 32))


def test_several_media_items_give_their_own_latents_and_masks():
    bridge = small(max_media=2)
    x = torch.randn(2, 2, 1, 7, 32)
    mask = torch.ones(2, 2, 1, 7, dtype=torch.bool)
    mask[1, 1] = False  # item 1 has only one media item
    mask[0, 0, 0, 5:] = False
    out = bridge(x, mask)
    assert out.embeds.shape == (2, 12, 32)
    assert out.mask[1, 6:].sum() == 0 and out.mask[1, :6].all() and out.mask[0].all()
    alone = bridge(x[1:, :1])
    torch.testing.assert_close(alone.embeds[0], out.embeds[1, :6])  # media 0 is resampled on its own
    with pytest.raises(ShapeError, match="max_media=2"):
        bridge(torch.randn(1, 3, 1, 7, 32))


def test_chatbridge_shared_resampler_has_one_latent_set_per_modality():
    bridge = small(modalities=["image", "video", "audio"], input_dims={"audio": 12})
    assert sorted(bridge.queries) == ["audio", "image", "video"]
    assert all(p.shape == (6, 32) for p in bridge.queries.values())
    n_layers = sum(1 for n, _ in bridge.named_parameters() if n.startswith("layers.0.attn.to_q"))
    assert n_layers == 1  # one resampler body, shared
    x = torch.randn(2, 9, 32)
    img, vid = bridge(x, modality="image"), bridge(x, modality="video")
    assert img.embeds.shape == vid.embeds.shape == (2, 6, 32)
    assert not torch.allclose(img.embeds, vid.embeds)
    audio = bridge(torch.randn(2, 9, 12), modality="audio")  # its own input width, its own projection
    assert audio.embeds.shape == (2, 6, 32)
    with pytest.raises(ShapeError, match=r"\[B, T, 12\]"):
        bridge(x, modality="audio")
    with pytest.raises(ConfigError, match="modality"):
        bridge(x)
    # only the used modality's latents learn from a batch of that modality
    bridge.train()
    (bridge(x, modality="video").embeds * torch.randn(2, 6, 32)).sum().backward()
    assert bridge.queries["video"].grad is not None and bridge.queries["image"].grad is None


def test_config_validation():
    with pytest.raises(ValueError, match="num_frames 3 exceeds max_frames 1"):
        PerceiverConfig(input_dim=4, output_dim=4, num_frames=3)
    with pytest.raises(ValueError, match="not in modalities"):
        PerceiverConfig(input_dim=4, output_dim=4, input_dims={"audio": 3})


def test_frozen_media_shortcut_matches_plain_autograd():
    """Frozen media take a fused path (one normalisation, no media input-gradient matmul); its outputs and every
    gradient, frame and media-time embeddings included, equal those of plain autograd (media requiring grad)."""
    bridge = small(num_frames=2, max_frames=3, max_media=2).train()
    with torch.no_grad():
        for layer in bridge.layers:
            layer.attn.norm_media.weight.uniform_(0.5, 1.5)
            layer.attn.norm_media.bias.normal_()
    x = torch.randn(2, 2, 2, 5, 32)
    mask = torch.ones(2, 2, 2, 5, dtype=torch.bool)
    mask[1, 1, 1, 2:] = False
    w = torch.randn(2, 12, 32)

    def grads(inp):
        bridge.zero_grad()
        out = bridge(inp, mask).embeds
        (out * w).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in bridge.named_parameters()}

    fast_out, fast = grads(x)
    plain_out, plain = grads(x.clone().requires_grad_(True))
    torch.testing.assert_close(fast_out, plain_out, atol=1e-5, rtol=1e-5)
    assert fast["frame_embs"].abs().sum() > 0 and fast["media_time_embs"].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-4, rtol=1e-4, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast_bf16 = bridge(x, mask).embeds
        plain_bf16 = bridge(x.clone().requires_grad_(True), mask).embeds
    scale = plain_out.abs().max()
    assert (fast_bf16.float() - plain_out).abs().max() < 0.05 * scale
    assert (plain_bf16.float() - plain_out).abs().max() < 0.05 * scale
