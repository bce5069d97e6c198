"""Decoding that cannot run away: stop at the end of the turn, cap each answer's length, and cut repetition loops.

A bridge trained briefly can leave a frozen LLM repeating itself until ``max_new_tokens`` ("the the the ...", or a
sentence over and over), which costs generation time and, for a transcript, inflates WER past 1. Three guards:

- :func:`end_of_turn_ids`: the chat template's end-of-turn token(s) (ChatML's ``<|im_end|>``, Llama-3's
  ``<|eot_id|>``, Gemma's ``<end_of_turn>``) stop generation as ``eos`` does.
- :class:`AnswerCap`: a per-row budget of new tokens. A CIF bridge fires one vector per spoken token, so its count
  bounds a transcript's length (:func:`cif_answer_caps`).
- :class:`RepetitionGuard`: ends a row whose last tokens are one block repeated ``min_repeats`` times in a row;
  :func:`strip_repeats` then keeps one copy of the block.

Guards are transformers ``LogitsProcessor`` objects: a finished row gets every logit but end-of-turn's set to -inf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

# end-of-turn markers of common chat templates
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def end_of_turn_ids(tokenizer: Any, eos: int | Sequence[int] | None = None) -> list[int]:
    """``eos`` (an id or ids, default the tokenizer's) plus the end-of-turn marker of the tokenizer's chat template
    when it is a single token other than ``eos`` (Llama-3 ends a turn with ``<|eot_id|>``, its eos is another)."""
    out: list[int] = []
    base = tokenizer.eos_token_id if eos is None else eos
    for e in base if isinstance(base, (list, tuple)) else [base]:
        if e is not None and int(e) not in out:
            out.append(int(e))
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return out
    vocab = tokenizer.get_vocab()
    for text in END_OF_TURN_TOKENS:
        tid = vocab.get(text) if text in template else None
        if tid is not None and int(tid) not in out:
            out.append(int(tid))
    return out


def _force_end(scores: torch.Tensor, rows: torch.Tensor, stop_id: int) -> torch.Tensor:
    """Leave only ``stop_id`` possible in ``rows`` (a bool ``[B]``)."""
    if bool(rows.any()):
        scores = scores.clone()
        scores[rows] = float("-inf")
        scores[rows, stop_id] = 0.0
    return scores


class _Guard(LogitsProcessor):
    """Counts new tokens from the first call (with ``inputs_embeds`` the ids hold only generated tokens; with a
    text prompt they start with it)."""

    def __init__(self, stop_id: int) -> None:
        self.stop_id = int(stop_id)
        self._start: int | None = None

    def generated(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._start is None:
            self._start = int(input_ids.shape[1])
        return input_ids[:, self._start :]


class AnswerCap(_Guard):
    """Per-row budget: once row ``i`` has ``caps[i]`` new tokens, only the end-of-turn token may follow
    (``None`` = no cap for that row)."""

    def __init__(self, caps: Sequence[int | None], stop_id: int) -> None:
        super().__init__(stop_id)
        self.caps = list(caps)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.generated(input_ids).shape[1]
        rows = torch.tensor([c is not None and n >= c for c in self.caps], device=scores.device)
        return _force_end(scores, rows, self.stop_id)


def repeated_tail(ids: Sequence[int], *, max_period: int, min_repeats: int) -> tuple[int, int]:
    """``(period, repeats)`` of the shortest block of at most ``max_period`` tokens that ends ``ids`` repeated at
    least ``min_repeats`` times in a row; ``(0, 0)`` when there is none."""
    n = len(ids)
    for p in range(1, max_period + 1):
        if p * min_repeats > n:
            break
        block = list(ids[n - p :])
        r = 1
        while (r + 1) * p <= n and list(ids[n - (r + 1) * p : n - r * p]) == block:
            r += 1
        if r >= min_repeats:
            return p, r
    return 0, 0


class RepetitionGuard(_Guard):
    """Ends a row whose new tokens end in a block of at most ``max_period`` tokens repeated ``min_repeats`` times
    in a row (a loop the greedy decoder will not leave)."""

    def __init__(self, stop_id: int, *, max_period: int = 8, min_repeats: int = 3) -> None:
        super().__init__(stop_id)
        self.max_period = max_period
        self.min_repeats = min_repeats

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        gen = self.generated(input_ids).tolist()
        rows = torch.tensor([repeated_tail(r, max_period=self.max_period, min_repeats=self.min_repeats)[0] > 0
                             for r in gen], device=scores.device)
        return _force_end(scores, rows, self.stop_id)


def strip_repeats(ids: Sequence[int], *, stop_ids: Sequence[int] = (), max_period: int = 8, min_repeats: int = 3) -> list[int]:
    """``ids`` with a looping tail (see :class:`RepetitionGuard`) cut back to one copy of its block; a trailing
    end-of-turn token is kept."""
    ids = list(ids)
    end = ids[-1:] if ids and ids[-1] in set(stop_ids) else []
    body = ids[: len(ids) - len(end)]
    period, repeats = repeated_tail(body, max_period=max_period, min_repeats=min_repeats)
    if period:
        body = body[: len(body) - (repeats - 1) * period]
    return body + end


def cif_answer_caps(aux: Mapping[str, Mapping[str, torch.Tensor]], groups: Mapping[str, Sequence[int]],
                    media: Sequence[Any], batch_size: int, *, slack: float = 0.25, extra: int = 2) -> list[int | None]:
    """Per batch row, a length cap from the CIF token counts its media fired (``aux[m]["cif_tokens"]``):
    ``ceil(n * (1 + slack)) + extra`` with ``n`` the row's total; None for rows without a CIF item."""
    counts: list[int | None] = [None] * batch_size
    for modality, idx in groups.items():
        fired = aux.get(modality, {}).get("cif_tokens")
        if fired is None:
            continue
        for row, i in enumerate(idx):
            b = int(media[i].batch_index)
            counts[b] = (counts[b] or 0) + int(fired[row])
    return [None if n is None else int(math.ceil(n * (1 + slack))) + extra for n in counts]


def answer_guards(model: Any, batch: Any, aux: Mapping[str, Mapping[str, torch.Tensor]],
                  groups: Mapping[str, Sequence[int]], stop_ids: int | Sequence[int] | None, *,
                  repetition_guard: bool = False) -> list[Any]:
    """The guards for one generation batch: a CIF length cap for rows whose media fired counted tokens, and the
    repetition guard when asked (evaluation). The first of ``stop_ids`` is the token a guarded row is ended with."""
    out: list[Any] = []
    stop_ids = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids or [])
    if not stop_ids:
        return out
    caps = cif_answer_caps(aux, groups, list(batch.media or []), len(batch))
    if any(c is not None for c in caps):
        out.append(AnswerCap(caps, stop_ids[0]))
    if repetition_guard:
        out.append(RepetitionGuard(stop_ids[0]))
    return out
