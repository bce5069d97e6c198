"""Presets: the reference stage schedules (X-LLM, ChatBridge, NExT-GPT) as YAML, merged with a user's overrides.

A plan with ``preset: NAME`` starts from ``presets/NAME.yaml`` (or a YAML path). Then, in order:

- ``defaults:`` (a partial stage) is merged into every preset stage - e.g. ``{batch_size: 8, data: {...}}``;
- ``stages:`` overrides stages, as a list (merged by position) or a mapping by stage name; ``NAME: false`` drops a
  stage;
- every other top-level key (``model``, ``output_dir``, ``seed``...) replaces the preset's.

Mappings merge recursively; lists and the ``objectives`` of a stage are replaced whole. A preset may carry
``model_defaults`` that shape the model config (ChatBridge: one shared perceiver for every modality).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError

PRESETS = ("xllm", "chatbridge", "nextgpt")
_REPLACE_WHOLE = {"objectives", "trainable"}


def preset_path(name: str) -> Path:
    """The YAML file of a built-in preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; built-in presets: {', '.join(PRESETS)} (or a YAML path)", field="preset")
    return Path(str(resources.files("xmm.training").joinpath("presets", f"{name}.yaml")))


def load_preset(name: str, *, base_dir: Path | None = None) -> dict[str, Any]:
    """A preset as a dict (``stages``, ``description``, optional ``model_defaults``)."""
    import yaml

    path = Path(name)
    if path.suffix in {".yaml", ".yml"}:
        path = path if path.is_absolute() or base_dir is None else base_dir / path
    else:
        path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read preset: {e.strerror or e}", field="preset", source=path) from e
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ConfigError("a preset must be a mapping with a 'stages' list", field="preset", source=path)
    return data


def deep_merge(base: Any, override: Any, *, _key: str | None = None) -> Any:
    """``override`` merged into a copy of ``base``: mappings recursively, everything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict) and _key not in _REPLACE_WHOLE:
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = deep_merge(out[k], v, _key=k) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def _merge_stages(stages: list[dict[str, Any]], overrides: Any, preset: str, source: str | None) -> list[dict[str, Any]]:
    if overrides is None:
        return stages
    if isinstance(overrides, list):
        if len(overrides) > len(stages):
            raise ConfigError(
                f"preset '{preset}' has {len(stages)} stages, the plan overrides {len(overrides)}; name extra stages "
                f"in a plan without a preset", field=f"stages.{len(stages)}", source=source,
            )
        for i, ov in enumerate(overrides):
            if not isinstance(ov, dict):
                raise ConfigError("a stage override must be a mapping", field=f"stages.{i}", source=source)
            stages[i] = deep_merge(stages[i], ov)
        return stages
    if isinstance(overrides, dict):
        by_name = {s["name"]: i for i, s in enumerate(stages)}
        drop = set()
        for name, ov in overrides.items():
            if name not in by_name:
                raise ConfigError(
                    f"preset '{preset}' has no stage '{name}'; its stages: {list(by_name)}", field=f"stages.{name}", source=source
                )
            if ov is False:
                drop.add(name)
            elif isinstance(ov, dict):
                stages[by_name[name]] = deep_merge(stages[by_name[name]], ov)
            else:
                raise ConfigError("a stage override must be a mapping (or false to drop the stage)", field=f"stages.{name}", source=source)
        return [s for s in stages if s["name"] not in drop]
    raise ConfigError("with a preset, 'stages' must be a list or a mapping by stage name", field="stages", source=source)


def _apply_model_defaults(model: Any, defaults: dict[str, Any], base_dir: Path, source: str | None) -> Any:
    if isinstance(model, str):
        from xmm.model.config import MultimodalConfig

        path = Path(model) if Path(model).is_absolute() else base_dir / model
        model = MultimodalConfig.load(path).model_dump(exclude_unset=True)
    if not isinstance(model, dict):
        return model
    model = copy.deepcopy(model)
    shared = defaults.get("shared_bridges") or {}
    per_modality = defaults.get("modality_defaults") or {}
    if not model.get("shared_bridges"):
        model["shared_bridges"] = copy.deepcopy(shared)
    for cfg in (model.get("modalities") or {}).values():
        if cfg is None or cfg.get("bridge") is not None or cfg.get("shared_bridge") is not None:
            continue  # a modality with its own bridge keeps it
        for k, v in per_modality.items():
            if k != "shared_bridge" or v in model["shared_bridges"]:
                cfg.setdefault(k, copy.deepcopy(v))
    return model


def apply_preset(data: dict[str, Any], *, base_dir: Path, source: str | None = None) -> dict[str, Any]:
    """Merge a plan dict that names ``preset`` into the preset; returns a plain plan dict (no ``defaults``)."""
    name = data["preset"]
    if not isinstance(name, str):
        raise ConfigError(f"preset must be a name ({', '.join(PRESETS)}) or a YAML path", field="preset", source=source)
    preset = load_preset(name, base_dir=base_dir)
    stages = [copy.deepcopy(s) for s in preset["stages"]]
    defaults = data.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, dict):
            raise ConfigError("'defaults' must be a mapping of stage fields", field="defaults", source=source)
        stages = [deep_merge(s, defaults) for s in stages]
    stages = _merge_stages(stages, data.get("stages"), name, source)
    out = {k: copy.deepcopy(v) for k, v in data.items() if k not in {"defaults", "stages"}}
    out["stages"] = stages
    if "model" in out and preset.get("model_defaults"):
        out["model"] = _apply_model_defaults(out["model"], preset["model_defaults"], base_dir, source)
    return out
