"""LoRA adapters on the frozen LLM, through peft's own API: inject, list, save and load the adapter weights.

Adapter layers are found as peft's ``BaseTunerLayer`` modules and their parameters through each layer's
``adapter_layer_names``; weights are saved and loaded with ``get_peft_model_state_dict`` /
``set_peft_model_state_dict`` (peft's own adapter format, so peft can read the folder too).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xmm.errors import CheckpointError, ConfigError, MissingDependencyError
from xmm.model.config import LoraSettings
from xmm.persist import validate_config

ADAPTER = "default"  # peft's name of the one adapter xmm injects


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is a core dependency
        raise MissingDependencyError("peft", purpose="LoRA") from e
    return peft


def lora_settings(settings: LoraSettings | dict[str, Any] | Any, *, source: str | None = None) -> LoraSettings:
    """:class:`LoraSettings` from itself, a dict (errors name the field) or a ``peft.LoraConfig``."""
    if isinstance(settings, LoraSettings):
        return settings
    if isinstance(settings, dict):
        return validate_config(LoraSettings, settings, source=source)
    try:
        return LoraSettings(r=settings.r, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
                            target_modules=sorted(settings.target_modules))
    except AttributeError as e:
        raise ConfigError(f"expected LoRA settings (a dict or peft.LoraConfig), got {type(settings).__name__}",
                          field="lora") from e


def tuner_layers(llm: nn.Module) -> dict[str, nn.Module]:
    """peft's adapter-carrying layers in ``llm`` by module name (empty without LoRA)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in llm.named_modules() if isinstance(m, BaseTunerLayer)}


def has_lora(llm: nn.Module) -> bool:
    return bool(tuner_layers(llm))


def inject_lora(llm: nn.Module, settings: LoraSettings, *, base_model_id: str | None = None) -> None:
    """Inject LoRA adapters into ``llm`` in place (peft freezes everything else in ``llm``)."""
    peft = _peft()
    if has_lora(llm):
        raise ConfigError("LoRA is already added to this LLM", field="lora")
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=list(settings.target_modules), bias="none",
                             base_model_name_or_path=base_model_id)
    try:
        peft.inject_adapter_in_model(config, llm)
    except ValueError as e:
        raise ConfigError(f"cannot add LoRA: {e}", field="lora.target_modules") from e


def lora_parameters(llm: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters by their name in ``llm`` (``...q_proj.lora_A.default.weight``); empty without LoRA."""
    out: dict[str, nn.Parameter] = {}
    for name, layer in tuner_layers(llm).items():
        for attr in layer.adapter_layer_names:
            part = getattr(layer, attr, None)
            if isinstance(part, nn.Module):
                for sub, p in part.named_parameters():
                    out[f"{name}.{attr}.{sub}"] = p
    return out


def peft_config(llm: nn.Module) -> Any:
    """The ``peft.LoraConfig`` of the injected adapter."""
    configs = getattr(llm, "peft_config", None)
    if not configs or ADAPTER not in configs:
        raise ConfigError("this model has no LoRA adapter", field="lora")
    return configs[ADAPTER]


def lora_state_dict(llm: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in peft's naming (``...q_proj.lora_A.weight``), as peft saves them."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(llm, save_embedding_layers=False)


def load_lora_state_dict(llm: nn.Module, state: dict[str, torch.Tensor], *, source: str = "LoRA weights") -> None:
    """Load adapter weights saved by :func:`lora_state_dict`, strictly (same names and shapes)."""
    from peft import set_peft_model_state_dict

    own = lora_state_dict(llm)
    if set(state) != set(own):
        raise CheckpointError(f"{source}: LoRA weights do not match the model: missing {sorted(set(own) - set(state))[:3]}, "
                              f"unexpected {sorted(set(state) - set(own))[:3]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: '{key}' has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")
    result = set_peft_model_state_dict(llm, state)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{source}: unexpected LoRA weights {result.unexpected_keys[:3]}")
