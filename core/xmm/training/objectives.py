"""Core's training objectives and the lookup of objectives by name.

The objectives here (``lm``, ``qformer_itc``/``itm``/``itg``, ``cif_quantity``, ``guided_answer``) reach the registry
through :mod:`xmm.training.core_plugin`'s ``xmm_objectives`` hook, like any plugin's (the contract is
:mod:`xmm.objective`). :func:`get_objective` looks a name up in the registry.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from xmm.errors import ConfigError
from xmm.model import IGNORE_INDEX
from xmm.model.media import turn_contexts
from xmm.objective import Objective, ObjectiveFn, objective, objective_step, step_memo

__all__ = [
    "CORE_OBJECTIVES",
    "Objective",
    "answer_tokens",
    "available_objectives",
    "count_answer_tokens",
    "get_objective",
    "media_features",
    "objective_step",
    "per_answer_cross_entropy",
    "register_objective",
    "step_memo",
    "unwrap",
]

# objectives added through the deprecated register_objective (looked up before the registry, as a replacement was)
_LEGACY: dict[str, Objective] = {}


def get_objective(name: str) -> Objective:
    """The objective named ``name`` (core's or a plugin's); raises :class:`ConfigError` listing the known names."""
    if name in _LEGACY:
        return _LEGACY[name]
    from xmm.registry import get_registry

    reg = get_registry()
    if name not in reg.objectives:
        failed = "; ".join(f"{p.name} ({p.error})" for p in reg.failures)
        hint = f". Plugins that failed to load: {failed}" if failed else ""
        raise ConfigError(f"unknown objective '{name}'; known: {', '.join(available_objectives())}{hint}")
    return reg.objectives[name]


def available_objectives() -> list[str]:
    """Names of every objective a stage can use."""
    from xmm.registry import get_registry

    return sorted(set(get_registry().objectives) | set(_LEGACY))


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
    """Deprecated: return an :class:`~xmm.objective.Objective` from an ``xmm_objectives`` hook instead.

    Adds ``fn`` under ``name`` for this process (``@register_objective("name")`` or ``register_objective("name", fn)``).
    A name already taken raises unless ``replace=True`` or it is the same function (a re-imported module).
    """
    warnings.warn("register_objective is deprecated and goes away in the next release: build the objective with "
                  "xmm.objective.objective(...) and return it from an `xmm_objectives` hook",
                  DeprecationWarning, stacklevel=2)

    def deco(f: ObjectiveFn) -> ObjectiveFn:
        old = _LEGACY.get(name)
        if old is None and name in available_objectives():
            old = get_objective(name)
        same = old is not None and _same_function(old.fn, f)
        if old is not None and not (replace or same):
            raise ConfigError(f"objective '{name}' is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        _LEGACY[name] = objective(name, needs_output=needs_output, needs_hidden_states=needs_hidden_states,
                                  description=description, token_mean=token_mean)(f)
        return f

    return deco(fn) if fn is not None else deco


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return (getattr(a, "__qualname__", None), getattr(a, "__module__", None)) == (
        getattr(b, "__qualname__", None), getattr(b, "__module__", None))


# -- helpers the built-in objectives share ---------------------------------------------------------------------
def unwrap(model: Any) -> Any:
    """The MultimodalLM under a DDP/accelerate wrapper."""
    while hasattr(model, "module") and not hasattr(model, "named_components"):
        model = model.module
    return model


def count_answer_tokens(batch: Any) -> int:
    """Answer tokens of a batch (positions with a label); 0 for an unusable (None) batch. A batch from the training
    data loader carries the count (``answer_tokens``, counted on the host), so no device is read here."""
    if batch is None or batch.labels is None:
        return 0
    known = getattr(batch, "answer_tokens", None)
    return int(known) if known is not None else int((batch.labels != IGNORE_INDEX).sum())


def answer_tokens(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer tokens of each example, left-aligned: ids ``[B, La]`` (pad 0) and mask ``[B, La]`` bool.

    Taken from ``batch.labels`` (everything that is not ``IGNORE_INDEX``), so a caption pair gives its caption.
    """
    labels = batch.labels
    keep = labels != IGNORE_INDEX
    lengths = keep.sum(1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    # each answer token's column in its row; the others go to a spare last column that is dropped
    col = torch.where(keep, keep.cumsum(1) - 1, width)
    ids = torch.zeros(labels.shape[0], width + 1, dtype=torch.long, device=labels.device)
    ids.scatter_(1, col, torch.where(keep, labels, 0))
    mask = torch.arange(width, device=labels.device) < lengths[:, None]
    return ids[:, :width], mask


# -- built-in objectives ---------------------------------------------------------------------------------------
@objective("lm", token_mean=True)
def lm_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """Next-token cross-entropy on the assistant answer tokens (what ``model(batch).loss`` is)."""
    return getattr(output, "loss", None)


def media_features(model: Any, items: list[Any]) -> list[Any]:
    """Encoder features of ``items`` (through the model's feature provider / cache), computed once per step."""
    memo = step_memo().setdefault("features", {})
    todo = [it for it in items if id(it) not in memo]
    if todo:
        m = unwrap(model)
        feats = m.media_features(todo)
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


QFORMER_ITC = objective("qformer_itc", needs_output=False,
                        description="Q-Former image-text contrastive loss (BLIP-2 stage 1)")(_qformer_objective("itc"))
QFORMER_ITM = objective("qformer_itm", needs_output=False,
                        description="Q-Former image-text matching loss with hard negatives (BLIP-2 stage 1)")(
    _qformer_objective("itm"))
QFORMER_ITG = objective("qformer_itg", needs_output=False,
                        description="Q-Former image-grounded text generation loss (BLIP-2 stage 1)")(
    _qformer_objective("itg"))


@objective("cif_quantity", needs_output=False)
def cif_quantity_loss(model: Any, batch: Any, output: Any) -> torch.Tensor | None:
    """CIF quantity loss of every CIF bridge: mean ``|sum(alpha) - n|`` with n the number of answer tokens (the
    transcript of a speech-text pair, end-of-turn tokens excluded), averaged over the modalities in the batch."""
    from xmm.encoder import EncoderOutput

    m = unwrap(model)
    labels = batch.labels
    answer = labels != IGNORE_INDEX
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
    command; a plain token mean lets long answers drown the short ones."""
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    per_answer = (ce * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_answer[valid.any(1)].mean()


_NEGATIVES: dict[tuple[int, int, str], torch.Tensor] = {}


def candidate_rows(targets: torch.Tensor, vocab: int, negatives: int) -> torch.Tensor:
    """Sorted vocabulary rows to score instead of the whole table: every id in ``targets`` plus ``negatives`` rows
    drawn once (the same for the whole run, from a fixed seed, so no RNG stream moves)."""
    key = (vocab, negatives, str(targets.device))
    fixed = _NEGATIVES.get(key)
    if fixed is None:
        gen = torch.Generator().manual_seed(0)
        fixed = _NEGATIVES[key] = torch.randperm(vocab, generator=gen)[: min(negatives, vocab)].to(targets.device)
    return torch.unique(torch.cat([targets.flatten(), fixed]))


@objective("guided_answer", needs_output=False)
def guided_answer_loss(model: Any, batch: Any, output: Any, negatives: int | None = None) -> torch.Tensor | None:
    """Cross-entropy of each instruction-guided bridge's guided tokens, read through the frozen LLM's own embedding
    table (tied to its LM head), against the answer: guided token g against answer token g, for the first
    ``guided_tokens`` tokens of the answer, each answer weighing the same (:func:`per_answer_cross_entropy`). No
    LLM layer runs, so a stage of it costs milliseconds a step: it turns the question-guided read-out into the
    answer's words before an ``lm`` stage teaches the LLM to use them (the role BLIP-2's stage 1 and X-LLM's
    "convert" stage play). Averaged over modalities.

    ``negatives``: score only the rows that matter (:func:`candidate_rows`: the batch's answer tokens and that many
    fixed other rows) instead of the whole vocabulary, a sampled softmax: with fp32 on a CPU the full table's
    logits are most of the stage's work. None: the whole vocabulary.
    """
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
        contexts = turn_contexts(token_embeds, items, batch.media)
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
        if not valid.any():
            continue
        if negatives is None:
            losses.append(per_answer_cross_entropy(guided @ weight.T, target, valid))
            continue
        rows_kept = candidate_rows(target[valid], weight.shape[0], negatives)
        local = torch.searchsorted(rows_kept, target).clamp(max=rows_kept.numel() - 1)
        losses.append(per_answer_cross_entropy(guided @ weight[rows_kept].T, local, valid))
    return torch.stack(losses).mean() if losses else None


CORE_OBJECTIVES: tuple[Objective, ...] = (lm_loss, QFORMER_ITC, QFORMER_ITM, QFORMER_ITG, cif_quantity_loss,
                                          guided_answer_loss)
