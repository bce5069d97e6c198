"""The objective registry: named training losses that a stage combines with weights.

An objective is ``fn(model, batch, output, **params) -> Tensor | None``: a scalar loss, or ``None`` when it does not
apply to this batch (e.g. a Q-Former loss on a batch without Q-Former media). ``output`` is ``model(batch)``, or
``None`` when no objective of the stage declared ``needs_output`` (stage-1 bridge alignment then never runs the LLM).
Other packages add objectives with :func:`register_objective` (the decoders register ``decoder_alignment``).

Several objectives can share work done once per step through :func:`step_memo` (a dict that lives for one step).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from xmm.errors import ConfigError, TrainingError

ObjectiveFn = Callable[..., "torch.Tensor | None"]

# modules that register objectives into this registry when imported (the output side: decoders/projectors)
PROVIDER_MODULES = ("xmm.projectors", "xmm.decoders", "xmm.decoders.alignment")


@dataclass(frozen=True)
class Objective:
    """A registered objective. ``needs_output``: it reads ``model(batch)``; ``needs_hidden_states``: it reads the
    LLM hidden states (the model is then called with ``output_hidden_states=True``)."""

    name: str
    fn: ObjectiveFn
    needs_output: bool = True
    needs_hidden_states: bool = False
    description: str = ""

    def __call__(self, model: Any, batch: Any, output: Any, **params: Any) -> torch.Tensor | None:
        return self.fn(model, batch, output, **params)


_OBJECTIVES: dict[str, Objective] = {}
_providers_loaded = False
_MEMO: ContextVar[dict[str, Any] | None] = ContextVar("xmm_objective_memo", default=None)


def register_objective(
    name: str,
    fn: ObjectiveFn | None = None,
    *,
    needs_output: bool = True,
    needs_hidden_states: bool = False,
    description: str = "",
    replace: bool = False,
) -> Any:
    """Register ``fn`` under ``name``; usable as ``@register_objective("name")`` or ``register_objective("name", fn)``.

    Registering a name twice raises unless ``replace=True`` or it is the same function (re-imported module).
    """

    def deco(f: ObjectiveFn) -> ObjectiveFn:
        old = _OBJECTIVES.get(name)
        same = old is not None and getattr(old.fn, "__qualname__", None) == getattr(f, "__qualname__", None) and getattr(
            old.fn, "__module__", None
        ) == getattr(f, "__module__", None)
        if old is not None and not (replace or same):
            raise ConfigError(f"objective '{name}' is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        doc = description or (f.__doc__ or "").strip().splitlines()[0] if (description or f.__doc__) else ""
        _OBJECTIVES[name] = Objective(name, f, needs_output or needs_hidden_states, needs_hidden_states, doc)
        return f

    return deco(fn) if fn is not None else deco


def _load_providers() -> None:
    global _providers_loaded
    if _providers_loaded:
        return
    _providers_loaded = True
    for mod in PROVIDER_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:  # the output side is optional
            continue


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; raises :class:`ConfigError` listing the known names."""
    if name not in _OBJECTIVES:
        _load_providers()
    if name not in _OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; known: {', '.join(available_objectives())}")
    return _OBJECTIVES[name]


def available_objectives() -> list[str]:
    _load_providers()
    return sorted(_OBJECTIVES)


@contextlib.contextmanager
def objective_step() -> Iterator[dict[str, Any]]:
    """Open a fresh per-step memo (the loop wraps each micro-batch in it)."""
    token = _MEMO.set({})
    try:
        yield _MEMO.get()  # type: ignore[misc]
    finally:
        _MEMO.reset(token)


def step_memo() -> dict[str, Any]:
    """The current step's shared dict (a throwaway one outside :func:`objective_step`)."""
    memo = _MEMO.get()
    return memo if memo is not None else {}


# -- helpers the built-in objectives share ---------------------------------------------------------------------
def unwrap(model: Any) -> Any:
    """The MultimodalLM under a DDP/accelerate wrapper."""
    while hasattr(model, "module") and not hasattr(model, "named_components"):
        model = model.module
    return model


def answer_tokens(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer tokens of each example, left-aligned: ids ``[B, La]`` (pad 0) and mask ``[B, La]`` bool.

    Taken from ``batch.labels`` (everything that is not -100), so a caption pair gives its caption.
    """
    labels = batch.labels
    keep = labels != -100
    lengths = keep.sum(1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    ids = torch.zeros(labels.shape[0], width, dtype=torch.long, device=labels.device)
    mask = torch.zeros(labels.shape[0], width, dtype=torch.bool, device=labels.device)
    for b in range(labels.shape[0]):
        n = int(lengths[b])
        ids[b, :n] = labels[b][keep[b]]
        mask[b, :n] = True
    return ids, mask


# -- built-in objectives ---------------------------------------------------------------------------------------
@register_objective("lm")
def lm_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """Next-token cross-entropy on the assistant answer tokens (what ``model(batch).loss`` is)."""
    return getattr(output, "loss", None)


def _qformer_losses(model: Any, batch: Any) -> dict[str, torch.Tensor]:
    """BLIP-2 stage-1 losses of every bridge that has ``stage1_losses``, averaged over the modalities in the batch.

    Each media item is paired with the answer (caption) of its own example. Computed once per step.
    """
    memo = step_memo()
    if "qformer" in memo:
        return memo["qformer"]
    m = unwrap(model)
    from xmm.encoder import EncoderOutput

    ids, mask = answer_tokens(batch)
    by_modality: dict[str, list[Any]] = {}
    for item in batch.media:
        by_modality.setdefault(item.modality, []).append(item)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for modality, items in by_modality.items():
        bridge = m.bridges[modality] if modality in m.bridges else None
        if bridge is None or not hasattr(bridge, "stage1_losses"):
            continue
        enc = EncoderOutput.pad(m.encode_media(items))
        rows = torch.tensor([it.batch_index for it in items], device=ids.device)
        text_ids, text_mask = ids[rows], mask[rows]
        kwargs = {"modality": modality} if _accepts(bridge.stage1_losses, "modality") else {}
        losses = bridge.stage1_losses(enc.features, enc.mask, text_ids, text_mask, **kwargs)
        for key, value in losses.items():
            sums[key] = sums[key] + value if key in sums else value
            counts[key] = counts.get(key, 0) + 1
    out = {k: v / counts[k] for k, v in sums.items()}
    memo["qformer"] = out
    return out


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _qformer_objective(key: str) -> ObjectiveFn:
    def fn(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
        return _qformer_losses(model, batch).get(key)

    fn.__name__ = fn.__qualname__ = f"qformer_{key}"
    return fn


register_objective(
    "qformer_itc", _qformer_objective("itc"), needs_output=False,
    description="Q-Former image-text contrastive loss (BLIP-2 stage 1)",
)
register_objective(
    "qformer_itm", _qformer_objective("itm"), needs_output=False,
    description="Q-Former image-text matching loss with hard negatives (BLIP-2 stage 1)",
)
register_objective(
    "qformer_itg", _qformer_objective("itg"), needs_output=False,
    description="Q-Former image-grounded text generation loss (BLIP-2 stage 1)",
)


@register_objective("cif_quantity")
def cif_quantity_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """CIF quantity loss: |sum of firing weights - number of answer tokens|, averaged over CIF media items."""
    aux = getattr(output, "aux", None) or {}
    losses = [v for k, v in aux.items() if k == "cif_quantity" or k.endswith("cif_quantity_loss")]
    if not losses:
        return None
    if any(v.dim() != 0 for v in losses):
        raise TrainingError("cif_quantity: expected scalar 'cif_quantity_loss' tensors in model(batch).aux")
    return torch.stack(losses).mean()
