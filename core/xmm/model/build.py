"""Building a :class:`~xmm.model.MultimodalLM` from its config: plugin parts from the registry, the frozen LLM,
fresh bridges with their dims filled in, placeholder and signal tokens, outputs and LoRA."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from xmm.encoder import Encoder
from xmm.errors import ConfigError, RegistryError
from xmm.llm import LoadedLLM, as_loaded_llm, load_llm
from xmm.modality import ModalitySpec, legacy_query_tokens
from xmm.model.config import MultimodalConfig
from xmm.model.lora import has_lora
from xmm.model.tokens import unwrap_llm
from xmm.registry import Registry, get_registry

if TYPE_CHECKING:
    from xmm.model.multimodal import MultimodalLM

M = TypeVar("M", bound="MultimodalLM")


@dataclass
class ModalityParts:
    """What the registry gives one configured modality: its spec, a ready encoder (frozen unless trainable) and
    ``plugin``, the manifest record of where they come from (``modality`` / ``encoder`` plugin identity,
    ``encoder_name``, ``encoder_config``)."""

    spec: ModalitySpec
    encoder: Encoder
    plugin: dict[str, Any]


def resolve_device(name: str | None) -> torch.device:
    """``name``, else the first there of cuda, mps (Apple GPUs), cpu."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def plugin_record(reg: Registry, kind: str, name: str) -> dict[str, Any]:
    """``{"name", "distribution", "version"}`` of the plugin that registered ``name`` in table ``kind``."""
    owner = reg.owner(kind, name)
    for p in reg.plugins:
        if p.name == owner and p.error is None:
            return {"name": p.name, "distribution": p.distribution, "version": p.version}
    return {"name": owner, "distribution": owner, "version": "?"}


def resolve_modalities(cfg: MultimodalConfig, reg: Registry, device: torch.device) -> dict[str, ModalityParts]:
    """Spec and encoder of every configured modality; a missing plugin fails here, before the LLM is loaded."""
    parts: dict[str, ModalityParts] = {}
    for name, mc in cfg.modalities.items():
        try:
            spec = reg.modality(name)
        except RegistryError as e:
            raise ConfigError(str(e), field=f"modalities.{name}") from e
        enc_name = mc.encoder or spec.encoder
        enc_cfg = {**dict(spec.encoder_config), **mc.encoder_config} if mc.encoder is None else dict(mc.encoder_config)
        try:
            enc = reg.create_encoder(enc_name, **enc_cfg)
        except RegistryError as e:
            raise ConfigError(str(e), field=f"modalities.{name}.encoder") from e
        except TypeError as e:  # an option the encoder factory does not take
            raise ConfigError(f"encoder '{enc_name}': {e}", field=f"modalities.{name}.encoder_config") from e
        if not enc.trainable:
            enc.freeze()  # frozen encoders never get gradients, whatever the plugin left on
        parts[name] = ModalityParts(spec, enc.to(device), {
            "modality": plugin_record(reg, "modalities", name),
            "encoder": plugin_record(reg, "encoders", enc_name),
            "encoder_name": enc_name,
            "encoder_config": enc_cfg,
        })
    return parts


def adopt_llm(llm: nn.Module) -> None:
    """Reuse an LLM taken from an earlier ``MultimodalLM`` (saves reloading it): restore its own embedding and LM
    head. The earlier model must not be used afterwards. LoRA layers cannot be taken off, so such an LLM is refused."""
    if has_lora(llm):
        raise ConfigError("this LLM carries LoRA adapters from another MultimodalLM; load a fresh one with "
                          "xmm.llm.load_llm()", field="llm")
    unwrap_llm(llm)


def obtain_llm(cfg: MultimodalConfig, llm: LoadedLLM | str | os.PathLike[str] | tuple[Any, Any, Any] | None,
               device: torch.device) -> tuple[MultimodalConfig, LoadedLLM]:
    """The LLM to build on: ``llm`` preloaded (adopted, moved to ``device``), or loaded from ``llm`` as a name or
    from ``cfg.llm``. The returned config names the LLM really used."""
    if llm is None or isinstance(llm, (str, os.PathLike)):
        if llm is not None:
            cfg = cfg.model_copy(update={"llm": str(llm)})  # the manifest must name the LLM really used
        return cfg, load_llm(cfg.llm, dtype=getattr(torch, cfg.dtype), device=str(device))
    loaded = as_loaded_llm(llm)
    adopt_llm(loaded.model)
    loaded.model.to(device)
    return cfg, loaded


def _bridge_fields(reg: Registry, btype: str) -> set[str]:
    try:
        return set(reg.bridge_class(btype).config_class.model_fields)
    except RegistryError:
        return set()  # create_bridge reports the unknown type


def _create_bridge(reg: Registry, data: dict[str, Any], where: str) -> nn.Module:
    try:
        return reg.create_bridge(data)
    except RegistryError as e:
        raise ConfigError(str(e), field=f"{where}.type") from e
    except ConfigError as e:
        raise ConfigError(str(e), field=where) from e


def _legacy_queries(spec: ModalitySpec, data: dict[str, Any], fields: set[str]) -> None:
    # a spec built with the deprecated num_query_tokens used to have it copied into the bridge's query field; keep
    # that for one release so such plugins build the same bridges (goes with ModalitySpec.num_query_tokens)
    q = legacy_query_tokens(spec)
    field = next((f for f in ("num_query_tokens", "num_queries") if f in fields), None)
    if q is not None and field is not None and field not in data:
        warnings.warn(f"modality '{spec.name}': the bridge's {field} comes from the deprecated "
                      f"ModalitySpec.num_query_tokens; put it in the spec's bridge config", DeprecationWarning, stacklevel=3)
        data[field] = q


def build_bridges(cfg: MultimodalConfig, specs: Mapping[str, ModalitySpec], encoders: Mapping[str, Encoder],
                  hidden: int, reg: Registry, *, vocab: int) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """One fresh bridge per modality, or one shared module per ``shared_bridges`` entry: ``(bridge by modality,
    bridge folder name by modality)``. ``input_dim`` / ``output_dim`` are filled from the encoder and the LLM width
    ``hidden``; a bridge with a text branch (the Q-Former's stage-1 objectives) reads the LLM tokenizer's ids, so
    its vocabulary defaults to ``vocab``. Everything else, including how many tokens it emits, is the bridge
    config's own (the modality's default ``bridge`` merged with the user's)."""
    bridges: dict[str, nn.Module] = {}
    names: dict[str, str] = {}
    shared: dict[str, nn.Module] = {}
    for name, mc in cfg.modalities.items():
        spec = specs[name]
        if mc.shared_bridge is not None:
            sname = mc.shared_bridge
            if sname not in shared:
                users = [m for m, c in cfg.modalities.items() if c.shared_bridge == sname]
                data = dict(cfg.shared_bridges[sname])
                dims = {encoders[m].output_dim for m in users}
                if "input_dim" not in data:
                    if len(dims) != 1:
                        raise ConfigError(
                            f"modalities {users} share bridge '{sname}' but their encoders have different output dims "
                            f"{sorted(dims)}; set shared_bridges.{sname}.input_dim or use bridges per modality",
                            field=f"shared_bridges.{sname}",
                        )
                    data["input_dim"] = dims.pop()
                data.setdefault("output_dim", hidden)
                fields = _bridge_fields(reg, data["type"])
                if "modalities" in fields:
                    data.setdefault("modalities", users)
                if "vocab_size" in fields and data.get("text_branch"):
                    data.setdefault("vocab_size", vocab)
                shared[sname] = _create_bridge(reg, data, f"shared_bridges.{sname}")
            bridges[name], names[name] = shared[sname], sname
            continue
        default = dict(spec.bridge)
        if mc.bridge is None:
            data = default
        elif "type" not in mc.bridge or mc.bridge["type"] == default["type"]:
            data = {**default, **mc.bridge}
        else:
            data = dict(mc.bridge)
        data.setdefault("input_dim", encoders[name].output_dim)
        data.setdefault("output_dim", hidden)
        fields = _bridge_fields(reg, data["type"])
        _legacy_queries(spec, data, fields)
        if "vocab_size" in fields and data.get("text_branch"):
            data.setdefault("vocab_size", vocab)
        bridges[name], names[name] = _create_bridge(reg, data, f"modalities.{name}.bridge"), name
    return bridges, names


def build_model(cls: type[M], config: MultimodalConfig | dict[str, Any] | str | os.PathLike[str], *,
                llm: LoadedLLM | str | os.PathLike[str] | None = None, registry: Registry | None = None,
                decoders: Mapping[str, Any] | None = None) -> M:
    """A ``cls`` (a :class:`~xmm.model.MultimodalLM`) with fresh bridges; see ``MultimodalLM.from_config``."""
    from xmm.model.outputs import attach_outputs

    cfg = MultimodalConfig.load(config)
    reg = registry or get_registry()
    device = resolve_device(cfg.device)
    parts = resolve_modalities(cfg, reg, device)  # before the LLM: a missing plugin fails fast
    cfg, loaded = obtain_llm(cfg, llm, device)
    specs = {m: p.spec for m, p in parts.items()}
    encoders = {m: p.encoder for m, p in parts.items()}
    hidden = int(loaded.model.get_input_embeddings().weight.shape[1])
    bridges, bridge_names = build_bridges(cfg, specs, encoders, hidden, reg, vocab=int(loaded.model.config.vocab_size))
    model = cls(loaded.model, loaded.tokenizer, loaded.info.as_dict(), cfg, specs, encoders,
                {m: b.to(device) for m, b in bridges.items()}, bridge_names=bridge_names,
                plugins={m: p.plugin for m, p in parts.items()})
    placeholders = [s.placeholder for s in specs.values()]
    if placeholders:
        model.add_tokens(placeholders, trainable=False)
    if cfg.outputs:
        # output tokens come before cfg.signal_tokens, so that a checkpoint rebuilt without cfg.signal_tokens has
        # the saved token order as a prefix
        attach_outputs(model, cfg.outputs, decoders=decoders, registry=reg)
    if cfg.signal_tokens:
        model.add_tokens(cfg.signal_tokens, trainable=True)
    if cfg.lora is not None:
        model.add_lora(cfg.lora)
    return model.eval()  # like transformers' from_pretrained; the trainer calls train()
