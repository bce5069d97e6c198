"""Trainable selectors: which parameters a stage trains, and freezing everything else.

A selector is a component name from ``model.named_components()`` (``bridge:image``, ``encoder:device``, ``llm:lora``,
``llm:embeddings:new``, ``projector:image``), an fnmatch pattern over those names (``bridge:*``), a component with a
parameter-name pattern inside it (``bridge:*:adapter`` = the ``adapter`` sub-module of every bridge), or, without any
``:``, an fnmatch pattern over the model's parameter names (``bridges.image.mlp.0.*``). A selector that matches
nothing is a :class:`~xmm.errors.ConfigError` unless it ends with ``?``.

Everything not selected is frozen: ``requires_grad=False``, no optimiser state (it is never handed to the optimiser),
and eval mode even when the model is put in train mode (see :func:`install_mode_guard`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xmm.errors import ConfigError


@dataclass
class Selection:
    """The outcome of resolving a stage's selectors: parameter names (model-level) in model order."""

    names: list[str]
    params: dict[str, nn.Parameter]
    by_selector: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params.values())


def parameter_names(model: nn.Module) -> dict[int, str]:
    """``id(param) -> name`` for every parameter (shared modules/tied weights under their first name)."""
    return {id(p): n for n, p in model.named_parameters()}


def _component_params(component: Any, names: dict[int, str]) -> list[tuple[str, str, nn.Parameter]]:
    """(model-level name, name inside the component, param) for a component module or list of parameters."""
    if isinstance(component, nn.Module):
        items = list(component.named_parameters())
    elif isinstance(component, nn.Parameter):
        items = [("", component)]
    elif isinstance(component, Iterable):
        items = [(names.get(id(p), str(i)), p) for i, p in enumerate(component)]
    else:
        raise TypeError(f"a component must be a module or parameters, got {type(component).__name__}")
    return [(names[id(p)], local, p) for local, p in items if id(p) in names]


def resolve_selector(model: nn.Module, selector: str, *, field_name: str | None = None, source: str | None = None,
                     components: dict[str, Any] | None = None, names: dict[int, str] | None = None) -> list[str]:
    """Parameter names (model-level) that ``selector`` picks; raises ConfigError when it picks none."""
    optional = selector.endswith("?")
    body = selector[:-1] if optional else selector
    names = names if names is not None else parameter_names(model)
    found: list[str] = []
    if ":" in body:
        components = components if components is not None else dict(model.named_components())  # type: ignore[operator]
        keys = [k for k in components if k == body or fnmatch.fnmatchcase(k, body)]
        sub = None
        if not keys:
            # kind:name:sub -> the params of `sub` inside each matching component
            head, _, sub = body.rpartition(":")
            keys = [k for k in components if k == head or fnmatch.fnmatchcase(k, head)] if head else []
            if not keys:
                sub = None
        for key in keys:
            for full, local, _p in _component_params(components[key], names):
                if sub is None or fnmatch.fnmatchcase(local, sub) or fnmatch.fnmatchcase(local, f"{sub}.*"):
                    found.append(full)
        if not found and not optional:
            known = ", ".join(sorted(components)) or "none"
            what = f"no parameter of {keys} matches '{sub}'" if keys and sub else f"no component matches; components: {known}"
            raise ConfigError(f"selector {selector!r} selects nothing: {what}", field=field_name, source=source)
    else:
        found = [n for n in names.values() if fnmatch.fnmatchcase(n, body)]
        if not found and not optional:
            sample = ", ".join(list(names.values())[:6])
            raise ConfigError(
                f"selector {selector!r} matches no parameter name (names look like: {sample}, ...)",
                field=field_name, source=source,
            )
    seen: set[str] = set()
    return [n for n in found if not (n in seen or seen.add(n))]


def select(model: nn.Module, selectors: Sequence[str], *, field_prefix: str = "trainable", source: str | None = None) -> Selection:
    """Resolve all selectors of a stage (union), in the model's parameter order."""
    names = parameter_names(model)
    components = dict(model.named_components()) if hasattr(model, "named_components") else {}  # type: ignore[operator]
    by_selector: dict[str, list[str]] = {}
    chosen: set[str] = set()
    for i, sel in enumerate(selectors):
        got = resolve_selector(model, sel, field_name=f"{field_prefix}.{i}", source=source, components=components, names=names)
        by_selector[sel] = got
        chosen.update(got)
    params = {n: p for n, p in model.named_parameters() if n in chosen}
    return Selection(list(params), params, by_selector)


def apply_selection(model: nn.Module, selection: Selection) -> None:
    """Freeze every parameter not in ``selection`` and unfreeze the selected ones; encoders follow their params."""
    chosen = {id(p) for p in selection.params.values()}
    for module in model.modules():
        # Encoder-like modules keep a frozen flag that pins them to eval mode; only one that is trained is unfrozen
        if hasattr(module, "freeze") and hasattr(module, "unfreeze") and hasattr(module, "_frozen"):
            if any(id(p) in chosen for p in module.parameters()):
                module.unfreeze()
            else:
                module.freeze()
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)


def enforce_modes(model: nn.Module, training: bool = True) -> None:
    """Put in train mode exactly the modules that hold a trainable parameter (anywhere below them); parameter-less
    modules (dropout, activations) follow their parent; everything else is in eval mode."""
    if not training:
        model.eval()
        return

    # (has parameters, has trainable parameters) of every subtree, memoised (modules can be shared)
    status: dict[int, tuple[bool, bool]] = {}

    def subtree(m: nn.Module) -> tuple[bool, bool]:
        if id(m) not in status:
            has = any(True for _ in m.parameters(recurse=False))
            trainable = any(p.requires_grad for p in m.parameters(recurse=False))
            for c in m.children():
                ch, ct = subtree(c)
                has, trainable = has or ch, trainable or ct
            status[id(m)] = (has, trainable)
        return status[id(m)]

    def walk(m: nn.Module, parent: bool) -> None:
        has, trainable = subtree(m)
        mode = trainable if has else parent
        m.training = mode
        for c in m.children():
            walk(c, mode)

    walk(model, True)


def install_mode_guard(model: nn.Module) -> None:
    """Make ``model.train()`` honour the freeze: after the normal switch, frozen modules go back to eval mode."""
    remove_mode_guard(model)
    cls_train = type(model).train

    def train(mode: bool = True) -> nn.Module:
        cls_train(model, mode)
        if mode:
            enforce_modes(model, True)
        return model

    train._xmm_mode_guard = True  # type: ignore[attr-defined]
    object.__setattr__(model, "train", train)


def remove_mode_guard(model: nn.Module) -> None:
    fn = model.__dict__.get("train")
    if fn is not None and getattr(fn, "_xmm_mode_guard", False):
        del model.__dict__["train"]


# -- gradient checkpointing of a frozen LLM --------------------------------------------------------------------
def enable_layer_checkpointing(llm: nn.Module) -> int:
    """Recompute each decoder layer in backward (non-reentrant ``torch.utils.checkpoint``), whatever its mode.

    transformers only checkpoints layers in train mode; a frozen base stays in eval mode here, yet gradients still
    flow through it to the bridges, so its activations are worth not storing. Returns the number of layers wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: no common base class
        GradientCheckpointingLayer = None  # noqa: N806
    n = 0
    for module in llm.modules():
        is_layer = GradientCheckpointingLayer is not None and isinstance(module, GradientCheckpointingLayer)
        if not is_layer or "forward" in module.__dict__:
            continue
        original = module.forward

        def forward(*args: Any, _orig: Any = original, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _orig(*args, **kwargs)
            kwargs.pop("use_cache", None)
            for key in ("past_key_values", "past_key_value", "layer_past"):
                if kwargs.get(key) is not None:
                    kwargs[key] = None
            return checkpoint(_orig, *args, use_reentrant=False, **kwargs)

        forward._xmm_checkpoint = True  # type: ignore[attr-defined]
        object.__setattr__(module, "forward", forward)
        n += 1
    return n


def disable_layer_checkpointing(llm: nn.Module) -> None:
    for module in llm.modules():
        fn = module.__dict__.get("forward")
        if fn is not None and getattr(fn, "_xmm_checkpoint", False):
            del module.__dict__["forward"]
