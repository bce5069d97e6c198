"""``decoder_alignment``: NExT-GPT's decoder-side alignment as a training objective.

The LLM learns to emit a decoder's signal tokens for a caption, and the output projector learns to turn their
hidden states into what the decoder's own text encoder makes of that caption. The loss pieces (MSE, signal-token
NLL, captions, memoised text targets) are in :mod:`xmm.decoders.alignment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from xmm.decoders.alignment import alignment_mse, captions_of, signal_nll, text_targets
from xmm.errors import TrainingError
from xmm.model.outputs import project_signals, signal_ids
from xmm.objective import objective
from xmm.training.objectives import unwrap


def decoder_alignment(model: Any, batch: Any, output: Any, *, mse_weight: float = 1.0, nll_weight: float = 1.0,
                      modalities: Sequence[str] | None = None) -> torch.Tensor | None:
    """The decoder-side alignment loss of a batch, summed over output modalities (each term a mean).

    ``output`` is ``model(batch, output_hidden_states=True)``: its last hidden states ``[B, L', d]`` over the
    spliced sequence and ``output.inputs.token_ids`` locate the signal tokens. ``None`` when the batch has no
    signal tokens of any output.
    """
    m = unwrap(model)
    if output is None or getattr(output, "hidden_states", None) is None:
        raise TrainingError("decoder_alignment needs the LLM hidden states: call the model with output_hidden_states=True")
    hidden = output.hidden_states[-1]
    inputs = output.inputs
    examples = list(getattr(batch, "examples", []) or [])
    total: torch.Tensor | None = None
    names = [n for n in m.projectors if modalities is None or n in modalities]
    for modality in names:
        cond, groups = project_signals(m, modality, hidden, inputs.token_ids, inputs.attention_mask)
        terms: list[torch.Tensor] = []
        if groups and mse_weight:
            captions = _group_captions(groups, examples, modality)
            target = text_targets(m.decoders[modality], captions).to(cond.device)
            terms.append(mse_weight * alignment_mse(cond, target))
        if nll_weight and output.logits is not None and inputs.labels is not None:
            nll = signal_nll(output.logits, inputs.labels, signal_ids(m, modality), getattr(output, "logits_positions", None))
            if nll is not None:
                terms.append(nll_weight * nll)
        for t in terms:
            total = t if total is None else total + t
    return total


def _group_captions(groups: list[Any], examples: list[Any], modality: str) -> list[str]:
    """The caption of each signal group: the k-th group of an example takes its k-th caption (the last one when it
    has fewer)."""
    seen: dict[int, int] = {}
    out = []
    for g in groups:
        b = g.batch_index
        if b >= len(examples):
            raise TrainingError("decoder_alignment needs the batch's examples (batch.examples) to find the captions")
        caps = captions_of(examples[b])
        if not caps:
            raise TrainingError(f"example {b} has signal tokens of '{modality}' but no caption: put the caption in the "
                                f"user message or in meta.caption")
        k = seen.get(b, 0)
        seen[b] = k + 1
        out.append(caps[min(k, len(caps) - 1)])
    return out


DECODER_ALIGNMENT = objective(
    "decoder_alignment", needs_hidden_states=True,
    description="NExT-GPT decoder-side alignment: MSE(projected signal states, decoder text embedding) + signal-token NLL",
)(decoder_alignment)
