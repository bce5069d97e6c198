"""``stack-mlp``: k frames per token in order, padding ignored, the gated MLP trains."""

from __future__ import annotations

import pytest
import torch
from xmm.bridges.stack import StackMLPBridge, StackMLPConfig
from xmm.errors import ShapeError


def _bridge(stack: int, d: int = 3, out: int = 8) -> StackMLPBridge:
    torch.manual_seed(0)
    return StackMLPBridge(StackMLPConfig(input_dim=d, output_dim=out, stack=stack, hidden_dim=16)).eval()


@pytest.mark.parametrize(("t", "k", "q"), [(8, 4, 2), (9, 4, 3), (1, 8, 1), (16, 1, 16)])
def test_frames_are_stacked_in_order_and_the_last_window_is_zero_filled(t, k, q):
    bridge = _bridge(k)
    x = torch.arange(t * 3, dtype=torch.float32).view(1, t, 3) + 1
    stacked, mask = bridge.stack_frames(x, torch.ones(1, t, dtype=torch.bool))
    assert stacked.shape == (1, q, 3 * k) and mask.tolist() == [[True] * q]
    flat = torch.cat([x.flatten(), torch.zeros(q * k * 3 - t * 3)])
    torch.testing.assert_close(stacked.flatten(), flat)


def test_padded_frames_change_nothing_and_all_padding_windows_are_masked():
    bridge = _bridge(4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 3, generator=g)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 5:] = False  # item 1: 5 real frames -> windows 0 and 1 (partly), window 2 is all padding
    out = bridge(x, mask)
    assert out.embeds.shape == (2, 3, 8)
    assert out.mask.tolist() == [[True, True, True], [True, True, False]]
    assert out.embeds[1, 2].abs().sum() == 0
    noisy = x.clone()
    noisy[1, 5:] = 100.0  # garbage in the padding must not reach the output
    torch.testing.assert_close(bridge(noisy, mask).embeds, out.embeds)
    alone = bridge(x[1:, :5], None)  # the same item unpadded gives the same tokens
    torch.testing.assert_close(alone.embeds[0], out.embeds[1, :2])


def test_wrong_width_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"\[B, T, 3\]"):
        _bridge(2)(torch.zeros(1, 4, 5))


def test_the_gated_mlp_learns_a_per_window_target():
    bridge = _bridge(2).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 6, 3, generator=g)
    target = torch.randn(3 * 2, 8, generator=g)[:3]  # one target vector per window position
    opt = torch.optim.Adam(bridge.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = (bridge(x).embeds - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0]
