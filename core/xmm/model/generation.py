"""Generation with a :class:`~xmm.model.MultimodalLM`: greedy or sampled, KV-cached, batched, streamed.

The prompt is collated with left padding, media are spliced into ``inputs_embeds`` and the frozen LLM's own
``generate`` continues from there (so KV cache, logits processors and stopping criteria are transformers'). With no
media the output equals the plain LLM's for the same prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from xmm.errors import ContextLengthError, PromptError
from xmm.model.collator import MultimodalBatch, MultimodalCollator
from xmm.model.decoding import answer_guards, end_of_turn_ids, strip_repeats
from xmm.model.splice import SplicedInputs


class GenerativeModel(Protocol):
    """What generation needs of a model (a :class:`~xmm.model.MultimodalLM` has it): the frozen ``llm`` and its
    ``tokenizer``, the context limit, a collator, the spliced prompt embeddings, autocast, train/eval mode, and
    the decoders of the output side."""

    llm: nn.Module
    tokenizer: Any
    decoders: nn.ModuleDict
    training: bool

    @property
    def max_length(self) -> int: ...

    def collator(self, **kwargs: Any) -> MultimodalCollator: ...

    def embed(self, batch: MultimodalBatch) -> tuple[SplicedInputs, Any, Any]: ...

    def autocast(self) -> AbstractContextManager[Any]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


@dataclass
class GenerationResult:
    """``texts[i]`` / ``token_ids[i]``: the answer of conversation i (ids up to and including the end-of-turn
    token). ``text`` is the first answer. ``outputs`` holds what the decoders produced for the first answer, by
    modality (a list of :class:`~xmm.model.outputs.ProducedOutput`, each with ``.value`` and ``.save(stem)``), when
    signal tokens appear (or a text decoder recognised the answer); ``all_outputs[i]`` the same for answer i.
    ``raw`` is what ``llm.generate`` returned (e.g. hidden states when asked for)."""

    texts: list[str]
    token_ids: list[list[int]]
    prompt_lengths: list[int]
    outputs: dict[str, Any] = field(default_factory=dict)
    raw: Any = None
    all_outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts[0]


def _as_examples(messages: Any, media: Sequence[Any] | None, base_dir: Any) -> tuple[list[Any], bool]:
    """Normalise one conversation / a string / a batch of them to collator examples; also says if it was a batch."""
    def one(conv: Any, m: Any = None) -> dict[str, Any]:
        if isinstance(conv, Mapping) and "messages" in conv:
            ex = dict(conv)
            ex.setdefault("base_dir", base_dir)
            if m:
                ex["media"] = list(ex.get("media") or []) + list(m)
            return ex
        return {"messages": conv, "base_dir": base_dir, "media": list(m) if m else None}

    if isinstance(messages, str) or (isinstance(messages, Mapping) and "messages" in messages):
        return [one(messages, media)], False
    if isinstance(messages, Sequence) and messages and all(isinstance(m, Mapping) and "role" in m for m in messages):
        return [one(list(messages), media)], False
    if isinstance(messages, Sequence) and messages:
        if media:
            raise PromptError("pass media inside each conversation of a batch (as content parts), not with media=")
        return [one(c) for c in messages], True
    raise PromptError("messages must be a string, a conversation (list of {'role', 'content'} dicts) or a list of them")


def _generation_config(model: GenerativeModel, max_new_tokens: int, do_sample: bool, temperature: float,
                       top_p: float, top_k: int | None, extra: dict[str, Any]) -> Any:
    import copy

    gc = copy.deepcopy(model.llm.generation_config)
    gc.max_new_tokens = max_new_tokens
    gc.max_length = None
    gc.do_sample = do_sample
    if do_sample:
        gc.temperature = temperature
        gc.top_p = top_p
        gc.top_k = top_k
    else:  # transformers warns about sampling knobs on greedy configs
        gc.temperature, gc.top_p, gc.top_k = None, None, None
    if gc.pad_token_id is None:
        gc.pad_token_id = model.tokenizer.pad_token_id
    if gc.eos_token_id is None:
        gc.eos_token_id = model.tokenizer.eos_token_id
    gc.eos_token_id = end_of_turn_ids(model.tokenizer, gc.eos_token_id)  # a turn also ends at its template's marker
    for k, v in extra.items():
        setattr(gc, k, v)
    return gc


def _eos_ids(gc: Any) -> set[int]:
    eos = gc.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def prepare(model: GenerativeModel, messages: Any, *, media: Sequence[Any] | None = None, base_dir: Any = None,
            max_new_tokens: int = 256) -> tuple[Any, bool]:
    """Collate and validate a generation prompt (media loaded, context checked) before any model work."""
    if max_new_tokens < 1:
        raise PromptError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    examples, is_batch = _as_examples(messages, media, base_dir)
    budget = model.max_length - max_new_tokens
    if budget < 1:
        raise ContextLengthError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the context of {model.max_length}")
    collator = model.collator(padding_side="left", add_generation_prompt=True, max_length=budget)
    try:
        batch = collator(examples)
    except ContextLengthError as e:
        raise ContextLengthError(f"{e} (the context of {model.max_length} minus max_new_tokens={max_new_tokens})") from e
    return batch, is_batch


def answer_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of a generated answer: special tokens left out, surrounding whitespace stripped (every answer
    ``generate``, ``chat``, ``stream``, ``xmm eval`` and ``xmm serve`` give is this text)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def stripped_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """Streamed text pieces that join to the stripped answer (:func:`answer_text`): leading whitespace is dropped,
    trailing whitespace is held back until more text follows it; no empty piece."""
    started, held = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        body = piece.rstrip()
        if body:
            yield held + body
            held = piece[len(body):]
        else:
            held += piece


def generate(
    model: GenerativeModel,
    messages: Any,
    *,
    media: Sequence[Any] | None = None,
    base_dir: Any = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    streamer: Any = None,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Answer ``messages`` (one conversation, a string, or a list of conversations for a batch).

    ``media``: parts that fill placeholders written literally in the text (single conversation only).
    Greedy by default; ``do_sample`` with ``temperature``/``top_p``/``top_k`` samples (``seed`` makes it
    repeatable). ``streamer``: any transformers streamer (batch size 1). Extra keyword arguments go to the
    generation config (e.g. ``repetition_penalty``, ``output_hidden_states=True, return_dict_in_generate=True``).
    """
    batch, _ = prepare(model, messages, media=media, base_dir=base_dir, max_new_tokens=max_new_tokens)
    return generate_batch(model, batch, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                          top_p=top_p, top_k=top_k, seed=seed, streamer=streamer, **generate_kwargs)


def generate_batch(
    model: GenerativeModel,
    batch: Any,
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    streamer: Any = None,
    stopping_criteria: Any = None,
    logits_processor: Any = None,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Generate from a batch collated by :func:`prepare` (left padding, generation prompt). ``stopping_criteria`` /
    ``logits_processor``: transformers lists passed to ``llm.generate`` (a criterion may end rows one by one); a
    streamer with ``batched = True`` takes each step's ``[B]`` tokens of a batch."""
    from transformers import LogitsProcessorList

    if streamer is not None and len(batch) != 1 and not getattr(streamer, "batched", False):
        raise PromptError("streaming works with one conversation at a time")
    run_decoders = bool(generate_kwargs.pop("run_decoders", True))  # False: text only, even with signal tokens
    repetition_guard = bool(generate_kwargs.pop("repetition_guard", False))  # evaluation: end rows stuck in a loop
    gc = _generation_config(model, max_new_tokens, do_sample, temperature, top_p, top_k, generate_kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()  # no dropout while generating, even when called in the middle of training
    try:
        with torch.no_grad(), model.autocast():
            spliced, aux, groups = model.embed(batch)
            prompt_len = spliced.inputs_embeds.shape[1]
            if prompt_len + max_new_tokens > model.max_length:
                raise ContextLengthError(f"the prompt takes {prompt_len} positions with its media; with max_new_tokens="
                                         f"{max_new_tokens} it exceeds the context of {model.max_length}")
            # a CIF bridge's token count caps a transcript's length; the repetition guard ends looping rows
            guards = answer_guards(model, batch, aux, groups, gc.eos_token_id, repetition_guard=repetition_guard)
            if guards:
                logits_processor = LogitsProcessorList([*guards, *(logits_processor or [])])
            raw = model.llm.generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                     generation_config=gc, streamer=streamer, stopping_criteria=stopping_criteria,
                                     logits_processor=logits_processor)
    finally:
        model.train(was_training)
    sequences = raw.sequences if hasattr(raw, "sequences") else raw
    eos = _eos_ids(gc)
    token_ids: list[list[int]] = []
    for row in sequences.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        token_ids.append(strip_repeats(row[:cut], stop_ids=list(eos)) if repetition_guard else row[:cut])
    texts = [answer_text(model.tokenizer, ids) for ids in token_ids]
    lengths = spliced.attention_mask.sum(-1).tolist()
    produced: list[dict[str, Any]] = []
    if run_decoders and len(getattr(model, "decoders", {})):
        from xmm.model.outputs import decode_generated  # the output side: signal tokens -> projector -> decoder

        produced = decode_generated(model, spliced, token_ids, texts)
    return GenerationResult(texts=texts, token_ids=token_ids, prompt_lengths=[int(n) for n in lengths],
                            raw=raw if hasattr(raw, "sequences") else None,
                            outputs=produced[0] if produced else {}, all_outputs=produced)


class TextStream:
    """Iterator of answer text pieces produced by a background generation thread.

    Errors raised in the thread are re-raised by the iterator; :attr:`result` holds the
    :class:`GenerationResult` once the iteration is over.
    """

    def __init__(self, model: GenerativeModel, messages: Any, *, timeout: float | None = None, **kwargs: Any) -> None:
        from transformers import TextIteratorStreamer

        # validate (and load media) in the caller's thread so bad input raises here, not mid-iteration
        batch, _ = prepare(model, messages, media=kwargs.pop("media", None), base_dir=kwargs.pop("base_dir", None),
                           max_new_tokens=kwargs.get("max_new_tokens", 256))
        if len(batch) != 1:
            raise PromptError("stream() takes one conversation; use generate() for batches")
        self._streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
        self.result: GenerationResult | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self.result = generate_batch(model, batch, streamer=self._streamer, **kwargs)
            except BaseException as e:  # handed to the consumer thread
                self._error = e
                self._streamer.end()

        self._thread = threading.Thread(target=run, name="xmm-generate", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        yield from stripped_pieces(self._streamer)
        self._thread.join()
        if self._error is not None:
            raise self._error


def stream(model: GenerativeModel, messages: Any, **kwargs: Any) -> TextStream:
    """Like :func:`generate` for one conversation, but returns an iterator of text pieces as they are produced."""
    return TextStream(model, messages, **kwargs)
