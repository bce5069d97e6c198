"""Concept grouping: hard one-hot assignments with straight-through gradients, staged counts, masks."""

from __future__ import annotations

import pytest
import torch
from xmm.bridges.grouping import ConceptGroupingBridge, ConceptGroupingConfig, hard_assign


def bridge(**kw) -> ConceptGroupingBridge:
    torch.manual_seed(0)
    base = dict(input_dim=10, output_dim=12, dim=32, num_heads=4, num_group_tokens=[8, 3], depths=[1, 1])
    return ConceptGroupingBridge(ConceptGroupingConfig(**{**base, **kw}))


def test_staged_group_counts_and_one_hot_assignments():
    b = bridge().eval()
    x = torch.randn(2, 20, 10)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False
    out, (a1, a2) = b.forward_with_assignments(x, mask)
    assert out.embeds.shape == (2, 3, 12)
    assert a1.shape == (2, 8, 20) and a2.shape == (2, 3, 8)
    # every real token goes to exactly one group; padded tokens to none
    assert torch.equal(a1.sum(1), mask.float())
    assert set(a1.unique().tolist()) <= {0.0, 1.0} and set(a2.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a2.sum(1), torch.ones(2, 8))


def test_default_config_is_nextgpt_64_then_8():
    cfg = ConceptGroupingConfig(input_dim=4, output_dim=4)
    assert cfg.num_group_tokens == [64, 8]
    with pytest.raises(ValueError, match="same non-zero length"):
        ConceptGroupingConfig(input_dim=4, output_dim=4, num_group_tokens=[8], depths=[1, 1])


def test_straight_through_gradient_reaches_the_assignment_logits():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    hard = hard_assign(logits, dim=-2, gumbel=False, tau=1.0)
    assert torch.equal(hard.sum(-2), torch.ones(2, 6)) and set(hard.unique().tolist()) == {0.0, 1.0}
    (hard * torch.randn(2, 4, 6)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    b = bridge().train()
    out = b(torch.randn(2, 20, 10))
    (out.embeds * torch.randn(out.embeds.shape)).sum().backward()
    for stage in b.stages:
        assert stage.grouping.assign.q_proj.weight.grad.abs().sum() > 0  # only the straight-through path reaches q/k
        assert stage.grouping.assign.k_proj.weight.grad.abs().sum() > 0


def test_gumbel_noise_only_in_training():
    b = bridge()
    x = torch.randn(2, 20, 10)
    b.eval()
    torch.manual_seed(1)
    e1 = b(x).embeds
    torch.manual_seed(2)
    assert torch.equal(e1, b(x).embeds)  # eval: arg-max, no noise
    b.train()
    torch.manual_seed(1)
    _, a = b.forward_with_assignments(x)
    torch.manual_seed(2)
    _, c = b.forward_with_assignments(x)
    assert not torch.equal(a[0], c[0])  # training samples the assignment
