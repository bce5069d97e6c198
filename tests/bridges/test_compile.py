"""torch.compile with the default (inductor) backend, forward and backward, once (C++ code generation is slow on CPU;
every bridge's graph capture is tested with the aot_eager backend in test_bridge_contract)."""

from __future__ import annotations

import pytest
import torch
from xmm.registry import get_registry


@pytest.mark.slow
@pytest.mark.parametrize("name", ["perceiver"])
def test_inductor_compiles_forward_and_backward(name):
    cls = get_registry().bridge_class(name)
    torch.manual_seed(0)
    bridge = cls.from_config(cls.tiny_config(12, 16)).eval()
    x = torch.randn(2, 9, 12)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    ref = bridge(x, mask)
    w = torch.randn(ref.embeds.shape)
    (ref.embeds * w).sum().backward()
    want = {n: p.grad.clone() for n, p in bridge.named_parameters()}
    bridge.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(bridge)
    out = compiled(x, mask)
    torch.testing.assert_close(out.embeds, ref.embeds, atol=1e-5, rtol=1e-4)
    (out.embeds * w).sum().backward()
    for n, p in bridge.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-4, rtol=1e-3, msg=n)
