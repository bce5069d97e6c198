"""Contract tests over everything registered: subclass one in a test module and pytest runs it for every name.

::

    from xmm.testing.contracts import BridgeContract

    class TestBridgeContract(BridgeContract):
        bridges = ["my-bridge"]  # default None: every bridge of the process-wide registry (core and plugins)

Each test method is parametrised over the names (``bridge_name``) and builds the bridge from its class's
``tiny_config(input_dim, output_dim)``, so a plugin's bridge is held to the same contract as core's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
import torch

from xmm.bridges.base import Bridge, BridgeOutput
from xmm.errors import CheckpointError, ShapeError
from xmm.persist import CONFIG_NAME
from xmm.registry import get_registry


class BridgeContract:
    """The :class:`~xmm.bridges.base.Bridge` contract: shapes, gradients, bit-exact save/load, strict loading,
    seeding, input checks, padding invariance, empty items, bf16 autocast and ``torch.compile`` tracing."""

    bridges: ClassVar[Sequence[str] | None] = None
    d_in: ClassVar[int] = 12
    d_out: ClassVar[int] = 16

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "bridge_name" in metafunc.fixturenames:
            names = sorted(get_registry().bridges) if self.bridges is None else list(self.bridges)
            metafunc.parametrize("bridge_name", names)

    def build(self, name: str, seed: int = 0) -> Bridge:
        """The registered bridge ``name`` from its ``tiny_config``, initialised under ``seed``."""
        cls = get_registry().bridge_class(name)
        torch.manual_seed(seed)
        return cls.from_config(cls.tiny_config(self.d_in, self.d_out))

    def inputs(self, b: int = 2, t: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[b, t, d_in]`` and a mask ``[b, t]`` whose item 1 has its last ``t - 6`` tokens padded."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, t, self.d_in, generator=g)
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[1, 6:] = False
        return x, mask

    def test_output_shapes(self, bridge_name: str) -> None:
        bridge = self.build(bridge_name).eval()
        x, mask = self.inputs()
        out = bridge(x, mask)
        assert isinstance(out, BridgeOutput)
        assert out.embeds.shape[0] == 2 and out.embeds.shape[-1] == self.d_out
        assert out.mask.shape == out.embeds.shape[:2] and out.mask.dtype == torch.bool
        q = bridge.num_output_tokens()
        if q is not None:
            assert out.embeds.shape[1] == q
        assert torch.isfinite(out.embeds).all()
        assert out.mask.any(dim=1).all()

    def test_every_trainable_parameter_gets_a_gradient(self, bridge_name: str) -> None:
        bridge = self.build(bridge_name).train()
        x, mask = self.inputs()
        torch.manual_seed(3)
        # instruction-aware bridges also read the question: give them one so that every parameter is in play
        extra: dict[str, Any] = {}
        if bridge.uses_context:
            extra = {"context": torch.randn(2, 5, self.d_out), "context_mask": torch.ones(2, 5, dtype=torch.bool)}
        out = bridge(x, mask, **extra)
        weights = torch.randn(out.embeds.shape)  # a random read-out: a plain sum would cancel behind a LayerNorm
        loss = (out.embeds * weights).sum()
        loss = loss + sum(v for v in out.aux.values() if v.dim() == 0 and v.is_floating_point())
        loss.backward()
        missing = [n for n, p in bridge.named_parameters()
                   if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert not missing, f"{bridge_name}: no gradient reaches {missing}"

    def test_save_load_round_trip_is_bit_exact(self, bridge_name: str, tmp_path: Any) -> None:
        bridge = self.build(bridge_name).eval()
        bridge.save_pretrained(tmp_path / "b")
        cfg = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())
        assert cfg["type"] == bridge_name
        loaded = Bridge.from_pretrained(tmp_path / "b").eval()
        assert type(loaded) is type(bridge) and loaded.config == bridge.config
        for (k1, v1), (k2, v2) in zip(bridge.state_dict().items(), loaded.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2)
        x, mask = self.inputs()
        a, b = bridge(x, mask), loaded(x, mask)
        assert torch.equal(a.embeds, b.embeds) and torch.equal(a.mask, b.mask)

    def test_load_refuses_a_shape_or_type_mismatch(self, bridge_name: str, tmp_path: Any) -> None:
        bridge = self.build(bridge_name)
        bridge.save_pretrained(tmp_path / "b")
        cfg_path = tmp_path / "b" / CONFIG_NAME
        cfg = json.loads(cfg_path.read_text())
        cfg["output_dim"] = self.d_out * 2
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="shape"):
            Bridge.from_pretrained(tmp_path / "b")
        other = next(n for n in sorted(get_registry().bridges) if n != bridge_name)
        with pytest.raises(CheckpointError, match=f"'{bridge_name}' cannot be loaded as"):
            get_registry().bridge_class(other).from_pretrained(tmp_path / "b")

    def test_same_seed_gives_the_same_output(self, bridge_name: str) -> None:
        x, mask = self.inputs()
        a, b = self.build(bridge_name, seed=5), self.build(bridge_name, seed=5)
        for mode in (False, True):  # eval, then train (dropout, Gumbel noise) under the same RNG state
            a.train(mode)
            b.train(mode)
            torch.manual_seed(7)
            out_a = a(x, mask)
            torch.manual_seed(7)
            out_b = b(x, mask)
            assert torch.equal(out_a.embeds, out_b.embeds), f"{bridge_name} (train={mode})"
        c = self.build(bridge_name, seed=6).eval()
        a.eval()
        assert not torch.equal(a(x, mask).embeds, c(x, mask).embeds)

    def test_wrong_input_shape_names_the_expected_shape(self, bridge_name: str) -> None:
        bridge = self.build(bridge_name)
        x, mask = self.inputs()
        with pytest.raises(ShapeError, match=rf"\[B, T, {self.d_in}\]"):
            bridge(torch.randn(2, 9, self.d_in + 1))
        with pytest.raises(ShapeError):
            bridge(torch.randn(9, self.d_in))
        with pytest.raises(ShapeError, match="mask"):
            bridge(x, mask[:, :5])

    def test_padded_tokens_change_nothing(self, bridge_name: str) -> None:
        bridge = self.build(bridge_name).eval()
        x, mask = self.inputs()
        junk = torch.randn(2, 5, self.d_in) * 100
        x_pad = torch.cat([x, junk], dim=1)
        mask_pad = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
        x_pad[1, 6:9] = -50.0  # the masked tail of item 1 changes too
        a, b = bridge(x, mask), bridge(x_pad, mask_pad)
        assert a.mask.sum() == b.mask.sum()
        torch.testing.assert_close(a.embeds[a.mask], b.embeds[b.mask], atol=1e-5, rtol=1e-4)
        # and one item alone gives what it gives in a batch
        single = bridge(x[1:, :6])
        torch.testing.assert_close(single.embeds[single.mask], a.embeds[1][a.mask[1]], atol=1e-5, rtol=1e-4)

    def test_an_item_without_tokens_is_masked_out(self, bridge_name: str) -> None:
        bridge = self.build(bridge_name).eval()
        x, mask = self.inputs()
        mask[0] = False
        out = bridge(x, mask)
        assert not out.mask[0].any() and out.mask[1].any()
        assert torch.isfinite(out.embeds).all()

    def test_bf16_autocast_on_cpu(self, bridge_name: str) -> None:
        bridge = self.build(bridge_name).eval()
        x, mask = self.inputs()
        ref = bridge(x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bridge(x, mask)
            loss = (out.embeds.float() * torch.randn(out.embeds.shape)).sum()
        loss.backward()
        assert torch.equal(out.mask, ref.mask)
        valid = out.mask
        err = (out.embeds.float() - ref.embeds)[valid].abs().max() / ref.embeds[valid].abs().max()
        assert err < 0.1, f"{bridge_name}: bf16 relative error {err}"
        assert all(torch.isfinite(p.grad).all() for p in bridge.parameters() if p.grad is not None)

    def test_traces_under_torch_compile(self, bridge_name: str) -> None:
        """Dynamo + AOT autograd capture forward and backward (inductor's code generation is a slower, separate
        check)."""
        bridge = self.build(bridge_name).eval()
        x, mask = self.inputs()
        ref = bridge(x, mask)
        torch._dynamo.reset()
        compiled = torch.compile(bridge, backend="aot_eager")
        out = compiled(x, mask)
        torch.testing.assert_close(out.embeds, ref.embeds, atol=1e-5, rtol=1e-4)
        (out.embeds * torch.randn(out.embeds.shape)).sum().backward()
