"""CIF fires the right tokens (against the sequential algorithm); the C-Former bridge trains with target lengths."""

from __future__ import annotations

import pytest
import torch
from xmm.bridges.cformer import CFormerBridge
from xmm.bridges.cif import integrate_and_fire
from xmm.errors import ShapeError


def sequential_cif(h: torch.Tensor, alpha: torch.Tensor, threshold: float, tail: float) -> torch.Tensor:
    """The frame-by-frame integrate-and-fire of the CIF paper, for one item: ``[T, D], [T] -> [K, D]``."""
    tokens, acc, integ = [], 0.0, torch.zeros(h.shape[1], dtype=torch.float64)
    for t in range(h.shape[0]):
        a = float(alpha[t])
        while acc + a >= threshold:  # fire (a scaled weight may fire more than once)
            need = threshold - acc
            tokens.append(integ + need * h[t].double())
            a -= need
            acc, integ = 0.0, torch.zeros_like(integ)
        acc += a
        integ = integ + a * h[t].double()
    if acc >= tail * threshold and acc > 0:
        tokens.append(integ)
    return torch.stack(tokens) if tokens else torch.zeros(0, h.shape[1], dtype=torch.float64)


@pytest.mark.parametrize("threshold", [1.0, 0.8])
def test_vectorised_cif_equals_the_sequential_scan(threshold):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 20, 5, generator=g)
    alpha = torch.rand(3, 20, generator=g) * 0.9
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 13:] = False
    mask[2, 4:] = False
    out = integrate_and_fire(h, alpha, mask, threshold=threshold, tail_threshold=0.5)
    for i in range(3):
        n = int(mask[i].sum())
        want = sequential_cif(h[i, :n], alpha[i, :n], threshold, 0.5)
        assert int(out.mask[i].sum()) == want.shape[0]
        torch.testing.assert_close(out.tokens[i, : want.shape[0]].double(), want, atol=1e-5, rtol=1e-5)
        assert out.tokens[i, want.shape[0] :].abs().sum() == 0
    torch.testing.assert_close(out.alpha_sum, (alpha * mask).sum(1))


def test_cif_counts_by_hand():
    h = torch.eye(4)[None]  # frame t is the unit vector e_t
    alpha = torch.tensor([[0.6, 0.6, 0.6, 0.3]])
    out = integrate_and_fire(h, alpha, torch.ones(1, 4, dtype=torch.bool), tail_threshold=0.5)
    # 2.1 in all: token 0 = 0.6 e0 + 0.4 e1, token 1 = 0.2 e1 + 0.6 e2 + 0.2 e3, the tail 0.1 < 0.5 does not fire
    assert out.mask.tolist() == [[True, True]]
    torch.testing.assert_close(out.tokens[0], torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.0, 0.2, 0.6, 0.2]]))
    tail = integrate_and_fire(h, torch.tensor([[0.6, 0.6, 0.6, 0.8]]), torch.ones(1, 4, dtype=torch.bool))
    assert tail.mask.sum() == 3  # 2.6: the tail of 0.6 fires
    scaled = integrate_and_fire(h, alpha, torch.ones(1, 4, dtype=torch.bool), target_lengths=torch.tensor([5]))
    assert scaled.mask.sum() == 5  # training: exactly the target count
    torch.testing.assert_close(scaled.tokens[0].sum(), torch.tensor(5.0))


def test_cformer_trains_to_the_target_length_and_reports_the_quantity_loss():
    torch.manual_seed(0)
    bridge = CFormerBridge(CFormerBridge.tiny_config(8, 12)).train()
    x = torch.randn(2, 30, 8)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    targets = torch.tensor([4, 9])
    out = bridge(x, mask, target_lengths=targets)
    assert out.mask.sum(1).tolist() == [4, 9] and out.embeds.shape == (2, 9, 12)
    assert out.aux["cif_alpha_sum"].shape == (2,)
    q = out.aux["cif_quantity"]
    torch.testing.assert_close(q, (out.aux["cif_alpha_sum"] - targets).abs().mean())
    opt = torch.optim.Adam(bridge.cif.parameters(), lr=0.05)
    for _ in range(30):  # the quantity loss teaches the predictor to count
        opt.zero_grad()
        bridge(x, mask, target_lengths=targets).aux["cif_quantity"].backward()
        opt.step()
    bridge.eval()
    with torch.no_grad():
        counted = bridge(x, mask)
    assert counted.mask.sum(1).tolist() == [4, 9]
    assert "cif_quantity" not in counted.aux
    with pytest.raises(ShapeError, match=r"target_lengths must have shape \[B\]"):
        bridge(x, mask, target_lengths=torch.tensor([3]))


def test_an_item_with_no_tokens_is_masked_not_nan():
    bridge = CFormerBridge(CFormerBridge.tiny_config(8, 12)).eval()
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    out = bridge(x, mask)
    assert out.mask[1].sum() == 0 and out.mask[0].sum() > 0
    assert torch.isfinite(out.embeds).all()


def test_prompt_vectors_come_first_and_are_saved_only_when_configured(tmp_path):
    torch.manual_seed(0)
    config = CFormerBridge.tiny_config(8, 12).model_copy(update={"prompt_tokens": 3})
    bridge = CFormerBridge(config).eval()
    x, mask = torch.randn(2, 30, 8), torch.ones(2, 30, dtype=torch.bool)
    out = bridge(x, mask, target_lengths=torch.tensor([4, 2]))
    assert out.embeds.shape == (2, 3 + 4, 12) and bridge.num_prompt_tokens == 3
    assert out.mask.tolist() == [[True] * 7, [True] * 5 + [False] * 2]
    assert torch.equal(out.embeds[:, :3], bridge.prompt.detach()[None].expand(2, -1, -1))
    assert out.aux["cif_tokens"].tolist() == [4, 2]  # the count the decoding cap uses: fired tokens only
    bridge.save_pretrained(tmp_path / "p")
    torch.testing.assert_close(CFormerBridge.from_pretrained(tmp_path / "p").prompt, bridge.prompt)
    plain = CFormerBridge(CFormerBridge.tiny_config(8, 12))
    assert plain.num_prompt_tokens == 0 and "prompt" not in plain.state_dict()  # older checkpoints still load
