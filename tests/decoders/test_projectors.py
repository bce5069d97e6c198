"""Output projectors: shapes, masks, validation errors, registry, strict save/load."""

from __future__ import annotations

import pytest
import torch
from xmm.errors import CheckpointError, ConfigError, ShapeError
from xmm.projectors import PROJECTORS
from xmm.projectors.base import Projector
from xmm.registry import create_projector, load_projector

SMALL = {
    "linear": {},
    "transformer": {"hidden_dim": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 2},
    "qformer": {"hidden_size": 32, "num_heads": 4, "num_layers": 2, "intermediate_size": 64},
}


def _make(kind: str, s: int = 4, t: int = 7, d: int = 12, d_llm: int = 24) -> Projector:
    torch.manual_seed(0)
    return create_projector({"type": kind, "input_dim": d_llm, "output_shape": [t, d], "num_input_tokens": s, **SMALL[kind]})


def test_core_projectors_are_registered(fresh_registry):
    assert {"linear", "qformer", "transformer"} <= set(PROJECTORS)
    for name in ("linear", "qformer", "transformer"):
        assert fresh_registry.projector_class(name) is PROJECTORS[name]
        assert fresh_registry.owner("projectors", name) == "xmm-core"


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_output_shape_and_gradients(kind):
    p = _make(kind)
    h = torch.randn(3, 4, 24, requires_grad=True)
    out = p(h)
    assert out.shape == (3, 7, 12)
    out.square().mean().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(q.grad is not None for q in p.parameters() if q.requires_grad)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_masked_signal_tokens_do_not_matter(kind):
    p = _make(kind).eval()
    h = torch.randn(2, 4, 24)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    h2 = h.clone()
    h2[0, 3] = 100.0  # a missing signal token's state is garbage
    a, b = p(h, mask), p(h2, mask)
    torch.testing.assert_close(a, b)
    # and an unmasked change does change the output
    h3 = h.clone()
    h3[0, 1] += torch.randn(24)
    assert not torch.allclose(p(h3, mask)[0], a[0])


@pytest.mark.parametrize("kind", ["qformer", "transformer"])
def test_query_projectors_items_are_independent_and_each_query_differs(kind):
    p = _make(kind).eval()
    h = torch.randn(2, 4, 24)
    both = p(h)
    torch.testing.assert_close(both[1:], p(h[1:]))
    # learned queries give T different outputs, not one vector repeated
    assert (both[0, 0] - both[0, 1]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["qformer", "transformer"])
def test_item_without_signal_tokens_is_finite(kind):
    p = _make(kind).eval()
    out = p(torch.randn(2, 4, 24), torch.tensor([[False] * 4, [True] * 4]))
    assert torch.isfinite(out).all()


def test_linear_without_token_map_needs_s_equals_t():
    p = create_projector({"type": "linear", "input_dim": 8, "output_shape": [3, 5]})
    assert p(torch.randn(1, 3, 8)).shape == (1, 3, 5)
    with pytest.raises(ShapeError, match="S = T = 3"):
        p(torch.randn(1, 4, 8))


def test_nextgpt_image_projector_size():
    """Default widths reproduce NExT-GPT's image output projector size (~31M params) for 77 x 1024 conditioning."""
    p = create_projector({"type": "transformer", "input_dim": 576, "output_shape": [77, 1024], "num_input_tokens": 4})
    n = sum(x.numel() for x in p.parameters())
    assert 25e6 < n < 36e6


def test_input_checks():
    p = _make("transformer")
    with pytest.raises(ShapeError, match=r"\[B, S, 24\]"):
        p(torch.randn(2, 4, 25))
    with pytest.raises(ShapeError, match="4 signal tokens"):
        p(torch.randn(2, 5, 24))
    with pytest.raises(ShapeError, match="mask"):
        p(torch.randn(2, 4, 24), torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "transformer", "input_dim": 8, "output_shape": [4, 8], "hidden_dim": 30, "num_heads": 4}, None),
        ({"type": "transformer", "input_dim": 0, "output_shape": [4, 8]}, "input_dim"),
        ({"type": "linear", "input_dim": 8, "output_shape": [0, 8]}, "output_shape"),
        ({"type": "linear", "input_dim": 8, "output_shape": [4, 8], "bogus": 1}, "bogus"),
        ({"type": "qformer", "input_dim": 8, "output_shape": [4, 8], "hidden_size": 30, "num_heads": 4}, None),
    ],
)
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        create_projector(data)
    if field:
        assert e.value.field == field
    else:
        assert "divisible" in str(e.value)


def test_unknown_type_lists_known():
    from xmm.errors import RegistryError

    with pytest.raises(RegistryError, match="transformer"):
        create_projector({"type": "nope", "input_dim": 8, "output_shape": [1, 1]})


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_save_load_roundtrip(kind, tmp_path):
    p = _make(kind).eval()
    p.save_pretrained(tmp_path / "p")
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == ["config.json", "model.safetensors"]
    q = load_projector(tmp_path / "p").eval()
    assert type(q) is type(p) and q.config == p.config
    h = torch.randn(2, 4, 24)
    torch.testing.assert_close(p(h), q(h))


def test_load_is_strict(tmp_path):
    _make("transformer").save_pretrained(tmp_path / "p")
    with pytest.raises(CheckpointError, match="cannot be loaded as"):
        PROJECTORS["linear"].from_pretrained(tmp_path / "p")
    # a config that no longer matches the weights
    import json

    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    cfg["output_shape"] = [8, 12]
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="queries"):
        load_projector(tmp_path / "p")
    with pytest.raises(CheckpointError, match="no projector"):
        load_projector(tmp_path / "missing")
