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

from xmm.errors import ConfigError

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
    token_mean: bool = False  # a mean over answer tokens: the loop re-weights it by the step's global token count

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
    token_mean: bool = False,
    replace: bool = False,
) -> Any:
    """Register ``fn`` under ``name``; usable as ``@register_objective("name")`` or ``register_objective("name", fn)``.

    ``token_mean``: ``fn`` returns a mean over the batch's answer tokens (labels != -100); the loop then weights
    each micro-batch by its share of the optimiser step's tokens over all processes, so N processes and gradient
    accumulation compute exactly the one-process, one-batch mean. Other objectives are averaged per micro-batch.
    Registering a name twice raises unless ``replace=True`` or it is the same function (re-imported module).
    """

    def deco(f: ObjectiveFn) -> ObjectiveFn:
        old = _OBJECTIVES.get(name)
        same = old is not None and getattr(old.fn, "__qualname__", None) == getattr(f, "__qualname__", None) and getattr(
            old.fn, "__module__", None
        ) == getattr(f, "__module__", None)
        if old is not None and not (replace or same):
            raise ConfigError(f"objective '{name}' is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        doc = description or next(iter((f.__doc__ or "").strip().splitlines()), "")
        _OBJECTIVES[name] = Objective(name, f, needs_output or needs_hidden_states, needs_hidden_states, doc, token_mean)
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


def count_answer_tokens(batch: Any) -> int:
    """Answer tokens of a batch (positions with a label); 0 for an unusable (None) batch."""
    return 0 if batch is None or batch.labels is None else int((batch.labels != -100).sum())


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
@register_objective("lm", token_mean=True)
def lm_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """Next-token cross-entropy on the assistant answer tokens (what ``model(batch).loss`` is)."""
    return getattr(output, "loss", None)


def media_features(model: Any, items: list[Any]) -> list[Any]:
    """Encoder features of ``items`` (through the model's feature provider / cache), computed once per step."""
    memo = step_memo().setdefault("features", {})
    todo = [it for it in items if id(it) not in memo]
    if todo:
        m = unwrap(model)
        feats = m.feature_provider(todo) if m.feature_provider is not None else m.encode_media(todo)
        for it, f in zip(todo, feats):
            memo[id(it)] = f
    return [memo[id(it)] for it in items]


def _by_modality(batch: Any) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for item in batch.media:
        groups.setdefault(item.modality, []).append(item)
    return groups


def _qformer_losses(model: Any, batch: Any) -> dict[str, torch.Tensor]:
    """BLIP-2 stage-1 losses of every bridge that has ``stage1_losses``, averaged over the modalities in the batch.

    Each media item is paired with the answer (caption) of its own example. Only the stage's own Q-Former objectives
    are computed, once per step.
    """
    memo = step_memo()
    if "qformer" in memo:
        return memo["qformer"]
    from xmm.encoder import EncoderOutput

    m = unwrap(model)
    names = memo.get("stage_objectives") or ["qformer_itc", "qformer_itm", "qformer_itg"]
    wanted = [n.removeprefix("qformer_") for n in names if n.startswith("qformer_")]
    ids, mask = answer_tokens(batch)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for modality, items in _by_modality(batch).items():
        bridge = m.bridges[modality] if modality in m.bridges else None
        if bridge is None or not hasattr(bridge, "stage1_losses") or getattr(bridge, "text", True) is None:
            continue  # not a Q-Former, or one without the text branch the stage-1 losses need
        enc = EncoderOutput.pad(media_features(model, items))
        rows = torch.tensor([it.batch_index for it in items], device=ids.device)
        losses = bridge.stage1_losses(enc.features.to(ids.device), enc.mask.to(ids.device), ids[rows], mask[rows],
                                      modality=modality, objectives=wanted)
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


@register_objective("cif_quantity", needs_output=False)
def cif_quantity_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """CIF quantity loss of every CIF bridge: mean ``|sum(alpha) - n|`` with n the number of answer tokens (the
    transcript of a speech-text pair, end-of-turn tokens excluded), averaged over the modalities in the batch."""
    from xmm.encoder import EncoderOutput

    m = unwrap(model)
    labels = batch.labels
    answer = labels != -100
    eos = getattr(m.tokenizer, "eos_token_id", None)
    if eos is not None:
        answer &= labels != eos
    lengths = answer.sum(1)
    losses = []
    for modality, items in _by_modality(batch).items():
        bridge = m.bridges[modality] if modality in m.bridges else None
        if bridge is None or not _accepts(bridge.forward, "target_lengths"):
            continue
        enc = EncoderOutput.pad(media_features(model, items))
        rows = torch.tensor([it.batch_index for it in items], device=lengths.device)
        out = bridge(enc.features.to(m.device, torch.float32), enc.mask.to(m.device), modality=modality,
                     target_lengths=lengths[rows])
        if "cif_quantity" in out.aux:
            losses.append(out.aux["cif_quantity"])
    if not losses:
        return None
    return torch.stack(losses).mean()


def per_answer_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [N, G, V]`` against ``target [N, G]`` where ``valid [N, G]``: the mean over each
    answer's valid tokens, then over the answers that have any. A 1-token "yes" then weighs as much as an 8-token
    command; a plain token mean let long answers drown the short ones (yes/no questions learned far slower)."""
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    per_answer = (ce * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_answer[valid.any(1)].mean()


@register_objective("guided_answer", needs_output=False)
def guided_answer_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """Cross-entropy of each instruction-guided bridge's guided tokens, read through the frozen LLM's own embedding
    table (tied to its LM head), against the answer: guided token g against answer token g, for the first
    ``guided_tokens`` tokens of the answer, each answer weighing the same (:func:`per_answer_cross_entropy`). No
    LLM layer runs, so a stage of it costs milliseconds a step: it turns the question-guided read-out into the
    answer's words before an ``lm`` stage teaches the LLM to use them (the role BLIP-2's stage 1 and X-LLM's
    "convert" stage play). Averaged over modalities."""
    from xmm.model.multimodal import turn_text_embeddings

    m = unwrap(model)
    if batch.labels is None or not batch.media:
        return None
    groups = {mod: items for mod, items in _by_modality(batch).items()
              if mod in m.bridges and getattr(m.bridges[mod], "uses_context", False)
              and getattr(m.bridges[mod].config, "guided_tokens", 0)}
    if not groups:
        return None
    ids, amask = answer_tokens(batch)
    input_ids = batch.input_ids.to(m.device)
    table = m.llm.get_input_embeddings()
    with torch.no_grad():
        token_embeds = table(input_ids)
    weight = table.weight.detach().float()
    losses = []
    for modality, items in groups.items():
        contexts = [turn_text_embeddings(token_embeds, input_ids, it, m.placeholder_ids) for it in items]
        embeds, _, _ = m.bridge_media(items, media_features(model, items), contexts)
        n_guided = m.bridges[modality].config.guided_tokens
        g = min(n_guided, ids.shape[1])
        # the guided tokens come last; an item with no valid input token has none (its output is empty)
        keep = [i for i, e in enumerate(embeds) if e.shape[0] >= n_guided]
        if not keep:
            continue
        guided = torch.stack([embeds[i][-n_guided:][:g] for i in keep]).float()
        rows = torch.tensor([items[i].batch_index for i in keep], device=ids.device)
        target, valid = ids[rows, :g].to(guided.device), amask[rows, :g].to(guided.device)
        if valid.any():
            losses.append(per_answer_cross_entropy(guided @ weight.T, target, valid))
    return torch.stack(losses).mean() if losses else None
