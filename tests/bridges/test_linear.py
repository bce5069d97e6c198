"""linear / mlp with token reduction on square grids."""

from __future__ import annotations

import pytest
import torch
from xmm.bridges.linear import MLPBridge, MLPConfig, grid_pool, grid_shuffle
from xmm.errors import ShapeError


def test_pool_averages_windows_and_keeps_partial_edges():
    x = torch.arange(49, dtype=torch.float32).view(1, 49, 1)  # 7 x 7 grid, value = row * 7 + col
    out, mask = grid_pool(x, torch.ones(1, 49, dtype=torch.bool), 3)
    assert out.shape == (1, 9, 1) and mask.all()
    grid = x.view(7, 7)
    assert out[0, 0, 0] == grid[:3, :3].mean() and out[0, 2, 0] == grid[:3, 6].mean() and out[0, 8, 0] == grid[6, 6]
    mask = torch.ones(1, 49, dtype=torch.bool)
    mask[0, 0] = False  # a padded token takes no part in its window
    out, _ = grid_pool(x, mask, 3)
    assert out[0, 0, 0] == (grid[:3, :3].sum() - 0) / 8


def test_pixel_shuffle_moves_neighbours_into_channels():
    x = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    out, mask = grid_shuffle(x, torch.ones(1, 16, dtype=torch.bool), 2)
    assert out.shape == (1, 4, 4) and mask.all()
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]
    with pytest.raises(ShapeError, match="divisible by 3"):
        grid_shuffle(x, torch.ones(1, 16, dtype=torch.bool), 3)


def test_mlp_with_reduction_and_non_square_error():
    b = MLPBridge(MLPConfig(input_dim=6, output_dim=8, pixel_shuffle=2))
    assert b.mlp[0].in_features == 24
    out = b(torch.randn(2, 36, 6))
    assert out.embeds.shape == (2, 9, 8)
    pooled = MLPBridge(MLPConfig(input_dim=6, output_dim=8, pool=2))
    assert pooled(torch.randn(2, 49, 6)).embeds.shape == (2, 16, 8)
    with pytest.raises(ShapeError, match="T = 50 tokens, which is not a square"):
        pooled(torch.randn(2, 50, 6))
    with pytest.raises(ValueError, match="either pool or pixel_shuffle"):
        MLPConfig(input_dim=6, output_dim=8, pool=2, pixel_shuffle=2)
    one = MLPBridge(MLPConfig(input_dim=6, output_dim=8, num_layers=1))
    assert one(torch.randn(1, 3, 6)).embeds.shape == (1, 3, 8)


def test_mlp_tokens_per_input_splits_each_input_into_consecutive_tokens():
    torch.manual_seed(0)
    b = MLPBridge(MLPConfig(input_dim=6, output_dim=8, tokens_per_input=3))
    x = torch.randn(2, 5, 6)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    out = b(x, mask)
    assert out.embeds.shape == (2, 15, 8)
    # input token i owns output tokens 3i..3i+2, and padding stays padding
    assert out.mask[1].tolist() == [True] * 12 + [False] * 3
    wide = b.mlp(x[0, 1])
    assert torch.allclose(out.embeds[0, 3:6], wide.view(3, 8))


def test_mlp_position_embeddings_start_at_zero_train_and_bound_the_length():
    b = MLPBridge(MLPConfig(input_dim=6, output_dim=8, position_embeddings=4, tokens_per_input=2))
    plain = MLPBridge(MLPConfig(input_dim=6, output_dim=8, tokens_per_input=2))
    plain.mlp.load_state_dict(b.mlp.state_dict())
    x = torch.randn(1, 2, 6)
    assert torch.equal(b(x).embeds, plain(x).embeds)  # zero-initialised: no change until trained
    b(x).embeds.sum().backward()
    assert b.position.grad is not None and b.position.grad.abs().sum() > 0
    with pytest.raises(ShapeError, match="position_embeddings = 4"):
        b(torch.randn(1, 3, 6))
