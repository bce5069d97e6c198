"""The plugin registry: in-process plugins, conflicts, failures, strict mode, blocking."""

from __future__ import annotations

import types

import pytest
import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import PluginError, RegistryError
from xmm.modality import ModalitySpec
from xmm.registry import Registry


class _ConstEncoder(Encoder):
    id = "const"
    output_dim = 4

    def preprocess(self, raw):
        return {"x": torch.as_tensor(raw, dtype=torch.float32).reshape(-1, 4)}

    def forward(self, x, lengths=None):
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        return EncoderOutput(x, mask)


def _plugin(modality: str, encoder: str = "const"):
    """A plugin object with hookimpls, as a module would have them."""
    ns = types.SimpleNamespace()

    @hookimpl
    def xmm_modalities():
        return [ModalitySpec(name=modality, placeholder=f"<{modality}>", load=lambda raw: raw, default_encoder=encoder)]

    @hookimpl
    def xmm_encoders():
        return {encoder: _ConstEncoder}

    ns.xmm_modalities = xmm_modalities
    ns.xmm_encoders = xmm_encoders
    return ns


def test_core_registers_its_bridges_through_hooks():
    reg = Registry(entry_points=False)
    core = reg.plugins[0]
    assert core.name == "xmm-core" and core.error is None
    assert {"linear", "mlp"} <= set(core.bridges)
    assert reg.owner("bridges", "mlp") == "xmm-core"


def test_in_process_plugin_is_registered_and_usable():
    reg = Registry(entry_points=False)
    info = reg.register(_plugin("thermo"), name="thermo-plugin", distribution="xmm-plugin-thermo", version="1.2")
    assert info.error is None
    assert info.modalities == ["thermo"] and info.encoders == ["const"]
    spec = reg.modality("thermo")
    assert spec.placeholder == "<thermo>"
    enc = reg.create_encoder(spec.default_encoder)
    out = enc.encode([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert out.features.shape == (1, 2, 4)


def test_name_conflict_is_isolated_with_distribution_and_version():
    reg = Registry(entry_points=False)
    reg.register(_plugin("thermo"), name="first", distribution="dist-a", version="1.0")
    info = reg.register(_plugin("thermo", encoder="other"), name="second", distribution="dist-b", version="2.0")
    assert info.error is not None and "already registered by 'first'" in info.error
    # the conflicting plugin is skipped whole: its non-conflicting encoder is not registered either
    assert "other" not in reg.encoders
    assert [p.name for p in reg.failures] == ["second"]
    assert (info.distribution, info.version) == ("dist-b", "2.0")


def test_conflict_raises_in_strict_mode():
    reg = Registry(entry_points=False, strict=True)
    reg.register(_plugin("thermo"), name="first")
    with pytest.raises(PluginError, match="dist-b 2.0.*already registered"):
        reg.register(_plugin("thermo"), name="second", distribution="dist-b", version="2.0")


def test_failing_hook_is_isolated():
    ns = types.SimpleNamespace()

    @hookimpl
    def xmm_bridges():
        raise RuntimeError("boom")

    ns.xmm_bridges = xmm_bridges
    reg = Registry(entry_points=False)
    info = reg.register(ns, name="bad", distribution="xmm-plugin-bad", version="0.1")
    assert "RuntimeError: boom" in info.error
    assert "mlp" in reg.bridges  # core is untouched


def test_unknown_names_raise_registry_error_listing_known():
    reg = Registry(entry_points=False)
    with pytest.raises(RegistryError, match=r"no bridge named 'nope'.*known: \[.*'linear'.*'mlp'") as e:
        reg.bridge_class("nope")
    assert "nope" in str(e.value)
    with pytest.raises(RegistryError, match="no modality named 'smell'"):
        reg.modality("smell")


def test_create_bridge_validates_config():
    from xmm.errors import ConfigError

    reg = Registry(entry_points=False)
    bridge = reg.create_bridge({"type": "mlp", "input_dim": 8, "output_dim": 16})
    assert bridge.num_output_tokens() is None or isinstance(bridge.num_output_tokens(), int)
    with pytest.raises(ConfigError, match="input_dim"):
        reg.create_bridge({"type": "mlp", "input_dim": -1, "output_dim": 16})
    with pytest.raises(ConfigError, match="hidden_size"):
        reg.create_bridge({"type": "mlp", "input_dim": 8, "output_dim": 16, "hidden_size": 3})


def test_fresh_registry_fixture_registers_in_process(fresh_registry):
    fresh_registry.register(_plugin("thermo"), name="thermo-plugin")
    from xmm.registry import get_registry

    assert get_registry() is fresh_registry
    assert "thermo" in get_registry().modalities
