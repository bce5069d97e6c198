"""The Bridge contract, checked for every registered bridge (core and plugins) with its ``tiny_config``."""

from __future__ import annotations

import json

import pytest
import torch
from xmm.bridges.base import CONFIG_NAME, Bridge, BridgeOutput
from xmm.errors import CheckpointError, ShapeError
from xmm.registry import get_registry

D_IN, D_OUT = 12, 16
NAMES = sorted(get_registry().bridges)


def build(name: str, seed: int = 0) -> Bridge:
    cls = get_registry().bridge_class(name)
    torch.manual_seed(seed)
    return cls.from_config(cls.tiny_config(D_IN, D_OUT))


def inputs(b: int = 2, t: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D_IN, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 6:] = False
    return x, mask


def test_core_bridges_are_registered():
    assert {"linear", "mlp", "qformer", "perceiver", "concept-grouping", "cformer"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    bridge = build(name).eval()
    x, mask = inputs()
    out = bridge(x, mask)
    assert isinstance(out, BridgeOutput)
    assert out.embeds.shape[0] == 2 and out.embeds.shape[-1] == D_OUT
    assert out.mask.shape == out.embeds.shape[:2] and out.mask.dtype == torch.bool
    q = bridge.num_output_tokens()
    if q is not None:
        assert out.embeds.shape[1] == q
    assert torch.isfinite(out.embeds).all()
    assert out.mask.any(dim=1).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_trainable_parameter_gets_a_gradient(name):
    bridge = build(name).train()
    x, mask = inputs()
    torch.manual_seed(3)
    # instruction-aware bridges also read the question: give them one so that every parameter is in play
    extra = {"context": torch.randn(2, 5, D_OUT), "context_mask": torch.ones(2, 5, dtype=torch.bool)} if bridge.uses_context else {}
    out = bridge(x, mask, **extra)
    weights = torch.randn(out.embeds.shape)  # a random read-out: a plain sum would cancel behind a LayerNorm
    loss = (out.embeds * weights).sum()
    loss = loss + sum(v for v in out.aux.values() if v.dim() == 0 and v.is_floating_point())
    loss.backward()
    missing = [n for n, p in bridge.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"{name}: no gradient reaches {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    bridge = build(name).eval()
    bridge.save_pretrained(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())
    assert cfg["type"] == name
    loaded = Bridge.from_pretrained(tmp_path / "b").eval()
    assert type(loaded) is type(bridge) and loaded.config == bridge.config
    for (k1, v1), (k2, v2) in zip(bridge.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x, mask = inputs()
    a, b = bridge(x, mask), loaded(x, mask)
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("name", NAMES)
def test_load_refuses_a_shape_or_type_mismatch(name, tmp_path):
    bridge = build(name)
    bridge.save_pretrained(tmp_path / "b")
    cfg_path = tmp_path / "b" / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    cfg["output_dim"] = D_OUT * 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        Bridge.from_pretrained(tmp_path / "b")
    other = next(n for n in NAMES if n != name)
    with pytest.raises(CheckpointError, match=f"'{name}' cannot be loaded as"):
        get_registry().bridge_class(other).from_pretrained(tmp_path / "b")


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_the_same_output(name):
    x, mask = inputs()
    a, b = build(name, seed=5), build(name, seed=5)
    for mode in (False, True):  # eval, then train (dropout, Gumbel noise) under the same RNG state
        a.train(mode)
        b.train(mode)
        torch.manual_seed(7)
        out_a = a(x, mask)
        torch.manual_seed(7)
        out_b = b(x, mask)
        assert torch.equal(out_a.embeds, out_b.embeds), f"{name} (train={mode})"
    c = build(name, seed=6).eval()
    a.eval()
    assert not torch.equal(a(x, mask).embeds, c(x, mask).embeds)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_shape_names_the_expected_shape(name):
    bridge = build(name)
    x, mask = inputs()
    with pytest.raises(ShapeError, match=rf"\[B, T, {D_IN}\]"):
        bridge(torch.randn(2, 9, D_IN + 1))
    with pytest.raises(ShapeError):
        bridge(torch.randn(9, D_IN))
    with pytest.raises(ShapeError, match="mask"):
        bridge(x, mask[:, :5])


@pytest.mark.parametrize("name", NAMES)
def test_padded_tokens_change_nothing(name):
    bridge = build(name).eval()
    x, mask = inputs()
    junk = torch.randn(2, 5, D_IN) * 100
    x_pad = torch.cat([x, junk], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    x_pad[1, 6:9] = -50.0  # the masked tail of item 1 changes too
    a, b = bridge(x, mask), bridge(x_pad, mask_pad)
    assert a.mask.sum() == b.mask.sum()
    torch.testing.assert_close(a.embeds[a.mask], b.embeds[b.mask], atol=1e-5, rtol=1e-4)
    # and one item alone gives what it gives in a batch
    single = bridge(x[1:, :6])
    torch.testing.assert_close(single.embeds[single.mask], a.embeds[1][a.mask[1]], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_an_item_without_tokens_is_masked_out(name):
    bridge = build(name).eval()
    x, mask = inputs()
    mask[0] = False
    out = bridge(x, mask)
    assert not out.mask[0].any() and out.mask[1].any()
    assert torch.isfinite(out.embeds).all()


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_on_cpu(name):
    bridge = build(name).eval()
    x, mask = inputs()
    ref = bridge(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bridge(x, mask)
        loss = (out.embeds.float() * torch.randn(out.embeds.shape)).sum()
    loss.backward()
    assert torch.equal(out.mask, ref.mask)
    valid = out.mask
    err = (out.embeds.float() - ref.embeds)[valid].abs().max() / ref.embeds[valid].abs().max()
    assert err < 0.1, f"{name}: bf16 relative error {err}"
    assert all(torch.isfinite(p.grad).all() for p in bridge.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_traces_under_torch_compile(name):
    """Dynamo + AOT autograd capture forward and backward (the inductor code generation is tested once, in test_compile)."""
    bridge = build(name).eval()
    x, mask = inputs()
    ref = bridge(x, mask)
    torch._dynamo.reset()
    compiled = torch.compile(bridge, backend="aot_eager")
    out = compiled(x, mask)
    torch.testing.assert_close(out.embeds, ref.embeds, atol=1e-5, rtol=1e-4)
    (out.embeds * torch.randn(out.embeds.shape)).sum().backward()
