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
        return [ModalitySpec(name=modality, placeholder=f"<{modality}>", load=lambda raw: raw, encoder=encoder)]

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
    enc = reg.create_encoder(spec.encoder)
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


# -- loading saved folders by their saved type ---------------------------------------------------------------------
_CORE = Registry(entry_points=False)


@pytest.mark.parametrize("name", sorted(_CORE.bridges))
def test_load_bridge_finds_the_class_by_saved_type(name, tmp_path):
    from xmm.registry import load_bridge

    reg = Registry(entry_points=False)
    cls = reg.bridge_class(name)
    torch.manual_seed(0)
    bridge = cls(cls.tiny_config(8, 16))
    bridge.save_pretrained(tmp_path / "b")
    loaded = load_bridge(tmp_path / "b", registry=reg)
    assert type(loaded) is cls and loaded.config == bridge.config
    assert loaded.state_dict().keys() == bridge.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in bridge.state_dict().items())


def test_load_bridge_of_a_plugin_type_and_of_an_unregistered_one(tmp_path):
    from typing import Literal

    from xmm.bridges.linear import MLPBridge, MLPConfig
    from xmm.errors import IncompatibleCheckpointError
    from xmm.registry import load_bridge

    class SmellConfig(MLPConfig):
        type: Literal["smell-mlp"] = "smell-mlp"  # type: ignore[assignment]

    class SmellBridge(MLPBridge):
        config_class = SmellConfig
        bridge_type = ""  # a plugin class is not stamped by core's register_bridge: its config's Literal names it

    ns = types.SimpleNamespace()

    @hookimpl
    def xmm_bridges():
        return {"smell-mlp": SmellBridge}

    ns.xmm_bridges = xmm_bridges
    reg = Registry(entry_points=False)
    reg.register(ns, name="smell-plugin")
    SmellBridge(SmellConfig(input_dim=4, output_dim=6)).save_pretrained(tmp_path / "b")
    assert type(load_bridge(tmp_path / "b", registry=reg)) is SmellBridge
    with pytest.raises(IncompatibleCheckpointError, match=r"config\.json: no bridge named 'smell-mlp'.*known"):
        load_bridge(tmp_path / "b", registry=Registry(entry_points=False))


def test_load_projector_finds_the_class_by_saved_type(tmp_path):
    from xmm.errors import CheckpointError
    from xmm.registry import load_projector

    reg = Registry(entry_points=False)
    for name in sorted(reg.projectors):
        cls = reg.projector_class(name)
        p = reg.create_projector({"type": name, "input_dim": 8, "output_shape": [2, 4], "num_input_tokens": 3})
        p.save_pretrained(tmp_path / name)
        loaded = load_projector(tmp_path / name, registry=reg)
        assert type(loaded) is cls and loaded.config == p.config
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in p.state_dict().items())
    with pytest.raises(CheckpointError, match="no projector config.json"):
        load_projector(tmp_path / "missing", registry=reg)


def test_base_classes_do_not_guess_a_type(tmp_path):
    from xmm.bridges.base import Bridge
    from xmm.errors import CheckpointError
    from xmm.projectors.base import Projector

    assert Bridge.saved_type() == "" and Projector.saved_type() == ""
    reg = Registry(entry_points=False)
    reg.create_bridge({"type": "mlp", "input_dim": 8, "output_dim": 16}).save_pretrained(tmp_path / "b")
    with pytest.warns(DeprecationWarning, match="xmm.registry.load_bridge"):
        assert type(Bridge.from_pretrained(tmp_path / "b")).__name__ == "MLPBridge"
    with pytest.raises(CheckpointError, match="'mlp' cannot be loaded as LinearBridge"):
        reg.bridge_class("linear").from_pretrained(tmp_path / "b")
    reg.create_projector({"type": "linear", "input_dim": 8, "output_shape": [2, 4]}).save_pretrained(tmp_path / "p")
    with pytest.warns(DeprecationWarning, match="xmm.registry.load_projector"):
        assert type(Projector.from_pretrained(tmp_path / "p")) is reg.projector_class("linear")


def test_projector_helpers_moved_to_the_registry_warn_from_their_old_place():
    import xmm.registry as registry
    from xmm.projectors import base

    for name in ("create_projector", "projector_class"):
        with pytest.warns(DeprecationWarning, match=f"xmm.projectors.base.{name} moved to xmm.registry"):
            assert getattr(base, name) is getattr(registry, name)
