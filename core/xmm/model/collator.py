"""Turning chat examples into a padded batch: ids, attention mask, answer-only labels and the media in order.

Used by :class:`~xmm.model.MultimodalLM` for generation (left padding, generation prompt) and by the trainer
(right padding, labels). Every media item is validated here, before any model work.

Text is untrusted too: its length is checked in characters before the tokenizer sees it (``$XMM_MAX_PROMPT_CHARS``),
and chat-template control tokens written in user, system or tool text (``<|im_start|>system ...``) are escaped so
they stay text (:mod:`xmm.textguard`; ``control_tokens="refuse"`` raises instead, ``"allow"`` keeps them, and
``$XMM_CONTROL_TOKENS`` sets the default). Assistant text is left alone: answers may hold the model's own tokens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from xmm.errors import ConfigError, ContextLengthError, PromptError
from xmm.limits import max_prompt_chars
from xmm.modality import ModalitySpec, legacy_query_tokens
from xmm.model.messages import MediaItem, parse_conversation
from xmm.model.splice import IGNORE_INDEX
from xmm.textguard import TextGuard

log = logging.getLogger(__name__)

CONTROL_TOKEN_POLICIES = ("escape", "refuse", "allow")
CONTROL_TOKENS_ENV = "XMM_CONTROL_TOKENS"


def control_token_policy(policy: str | None = None) -> str:
    """``policy``, else ``$XMM_CONTROL_TOKENS``, else ``"escape"``; anything else is a :class:`ConfigError`."""
    value = policy if policy is not None else (os.environ.get(CONTROL_TOKENS_ENV, "").strip().lower() or "escape")
    if value not in CONTROL_TOKEN_POLICIES:
        raise ConfigError(f"must be one of {', '.join(CONTROL_TOKEN_POLICIES)}, got {value!r}",
                          field="control_tokens", source=None if policy is not None else f"${CONTROL_TOKENS_ENV}")
    return value


def text_chars(messages: Sequence[Mapping[str, str]]) -> int:
    """Characters of text in flattened (string-content) messages."""
    return sum(len(m["content"]) for m in messages)

# used only when a tokenizer has no chat template of its own (base models): ChatML, as many instruct models use
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class MultimodalBatch:
    """A collated batch. ``input_ids``/``attention_mask``/``labels``: ``[B, L]`` with one placeholder id per media
    item; ``labels`` is ``IGNORE_INDEX`` (-100) except on assistant answer tokens (None for generation batches). ``media`` lists the
    items in row-major order of their placeholders (``item.batch_index``, ``item.position``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    media: list[MediaItem] = field(default_factory=list)
    padding_side: Literal["left", "right"] = "right"
    examples: list[Any] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultimodalBatch:
        self.input_ids = self.input_ids.to(device, non_blocking=non_blocking)
        self.attention_mask = self.attention_mask.to(device, non_blocking=non_blocking)
        if self.labels is not None:
            self.labels = self.labels.to(device, non_blocking=non_blocking)
        return self

    def pin_memory(self) -> MultimodalBatch:
        """Page-lock the batch's tensors (and its items' preprocessed inputs) so copies to a GPU can overlap
        compute; what a DataLoader with ``pin_memory=True`` calls."""
        self.input_ids = self.input_ids.pin_memory()
        self.attention_mask = self.attention_mask.pin_memory()
        if self.labels is not None:
            self.labels = self.labels.pin_memory()
        for item in self.media:
            ready = getattr(item, "preprocessed", None)
            if ready is not None:
                item.preprocessed = {k: v.pin_memory() for k, v in ready.items()}
        return self


class MultimodalCollator:
    """Collate examples ``{"messages": [...], "base_dir": Path | None, "media": [...]?}`` (or bare message lists)
    into a :class:`MultimodalBatch`.

    ``padding_side``: ``right`` for training, ``left`` for generation. ``add_generation_prompt``: end each prompt with
    the assistant header (generation). ``media_tokens(item) -> int`` says how many LLM positions an item takes
    (the model's :meth:`~xmm.model.MultimodalLM.num_media_tokens`; a lower bound where the bridge decides at run
    time) so that over-long prompts fail here with :class:`ContextLengthError`. ``load_media``:
    decode every item now (validation before model work); with False only cheap checks run (a feature cache may
    make decoding unnecessary). ``system_prompt``: system message put first when a conversation has none (default:
    the model config's; None keeps the chat template's own default). ``control_tokens``: what control tokens in
    non-assistant text become (see the module docstring). ``max_chars``: the most characters of text in one example
    (default ``xmm.limits.max_prompt_chars()``), checked before tokenising.
    """

    def __init__(
        self,
        model_or_tokenizer: Any,
        specs: Mapping[str, ModalitySpec] | None = None,
        *,
        padding_side: Literal["left", "right"] = "right",
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        media_tokens: Callable[[MediaItem], int] | None = None,
        load_media: bool = True,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        control_tokens: str | None = None,
        max_chars: int | None = None,
    ) -> None:
        if hasattr(model_or_tokenizer, "tokenizer") and hasattr(model_or_tokenizer, "specs"):
            model = model_or_tokenizer
            self.tokenizer = model.tokenizer
            self.specs = dict(specs if specs is not None else model.specs)
            max_length = max_length if max_length is not None else model.max_length
            if system_prompt is None:
                system_prompt = getattr(getattr(model, "config", None), "system_prompt", None)
            media_tokens = media_tokens or model.num_media_tokens
        else:
            self.tokenizer = model_or_tokenizer
            self.specs = dict(specs or {})
        if padding_side not in ("left", "right"):
            raise PromptError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        self.add_generation_prompt = add_generation_prompt
        self.max_length = max_length
        self.media_tokens = media_tokens or _media_tokens_without_model
        self.load_media = load_media
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.control_tokens = control_token_policy(control_tokens)
        self.max_chars = max_chars if max_chars is not None else max_prompt_chars()
        self._guard: TextGuard | None = None
        if chat_template is None and getattr(self.tokenizer, "chat_template", None) is None:
            log.warning("the tokenizer has no chat template; using a ChatML fallback")
            self.chat_template = FALLBACK_CHAT_TEMPLATE
        self._placeholder_ids: dict[int, str] = {}
        for name, spec in self.specs.items():
            ids = self.tokenizer.convert_tokens_to_ids([spec.placeholder])
            tid = ids[0] if ids else None
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if tid is None or (unk is not None and tid == unk):
                raise PromptError(f"placeholder {spec.placeholder} of modality '{name}' is not a token of the tokenizer; "
                                  "add it with MultimodalLM.add_tokens")
            self._placeholder_ids[int(tid)] = name
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        eos = self.tokenizer.eos_token_id
        self.turn_end_id: int | None = int(eos) if eos is not None else None

    @property
    def placeholder_ids(self) -> dict[int, str]:
        """Token id -> modality name of every placeholder."""
        return dict(self._placeholder_ids)

    # -- untrusted text ---------------------------------------------------------------------------
    @property
    def guard(self) -> TextGuard | None:
        """The control-token guard of this tokenizer (placeholders excluded), None with ``control_tokens="allow"``."""
        if self.control_tokens == "allow":
            return None
        if self._guard is None:
            placeholders = [s.placeholder for s in self.specs.values()]
            self._guard = TextGuard.for_tokenizer(self.tokenizer, policy=self.control_tokens,  # type: ignore[arg-type]
                                                  exclude=placeholders)
        return self._guard

    def guard_text(self, msgs: list[dict[str, str]], index: int = 0) -> list[dict[str, str]]:
        """``msgs`` with the length limit checked and control tokens in non-assistant text handled by the policy."""
        n = text_chars(msgs)
        if n > self.max_chars:
            raise PromptError(f"example {index}: {n:,} characters of text, over the limit of {self.max_chars:,} "
                              "($XMM_MAX_PROMPT_CHARS raises it)")
        guard = self.guard
        if guard is None:
            return msgs
        return [m if m["role"] == "assistant" else {**m, "content": guard.apply(m["content"], where=f"example {index}, "
                                                                                 f"message {i} ({m['role']})")}
                for i, m in enumerate(msgs)]

    # -- rendering --------------------------------------------------------------------------------
    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        """The LLM's own chat template applied to string-content messages (no tokenisation)."""
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        messages = list(messages)
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def _answer_spans(self, msgs: list[dict[str, str]], full: str) -> list[tuple[int, int]]:
        """Character spans of the assistant answers in ``full``, each ending with the end-of-turn text."""
        spans: list[tuple[int, int]] = []
        cursor = 0
        eos = self.tokenizer.eos_token or ""
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            upto = self.render(msgs[: i + 1], False)
            before = self.render(msgs[:i], True) if i > 0 else None
            if before is not None and upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
                # the template's own framing: everything it adds after the assistant header up to the end of the
                # turn (answer + end-of-turn token), minus trailing whitespace the model never has to produce
                start, end = len(before), len(upto.rstrip())
            else:
                start = full.find(m["content"], cursor)
                if start < 0:
                    raise PromptError(f"message {i} (assistant): the chat template does not render its content verbatim; "
                                      "cannot locate the answer tokens for the labels")
                end = start + len(m["content"])
                rest = full[end:]
                if eos and rest.lstrip(" ").startswith(eos):
                    end += len(rest) - len(rest.lstrip(" ")) + len(eos)
            if end > start:
                spans.append((start, end))
            cursor = max(cursor, end)
        return spans

    # -- one example -----------------------------------------------------------------------------
    def encode_example(self, example: Any, index: int = 0) -> tuple[list[int], list[int], list[MediaItem]]:
        """One example -> (ids, labels, media items in order), all checked."""
        if isinstance(example, Mapping):
            if "messages" not in example:
                raise PromptError(f"example {index}: needs a 'messages' key, got keys {sorted(example)}")
            messages, base_dir, media = example["messages"], example.get("base_dir"), example.get("media")
            outside = bool(example.get("allow_outside_paths", False))
        else:
            messages, base_dir, media, outside = example, None, None, False
        try:
            conv = parse_conversation(messages, self.specs, media=media, base_dir=base_dir, allow_outside_paths=outside)
        except PromptError as e:
            raise PromptError(f"example {index}: {e}") from e
        msgs = self.guard_text(conv.messages, index)
        if self.add_generation_prompt and msgs[-1]["role"] == "assistant":
            raise PromptError(f"example {index}: the last message is the assistant's; nothing to generate")
        full = self.render(msgs, self.add_generation_prompt)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        if not self.add_generation_prompt:
            for start, end in self._answer_spans(msgs, full):
                for t, (a, b) in enumerate(offsets):
                    if start <= a < end and b > a:
                        labels[t] = ids[t]
        # the placeholders the tokenizer produced must be exactly the media, in order
        found = [(t, self._placeholder_ids[tid]) for t, tid in enumerate(ids) if tid in self._placeholder_ids]
        if [m for _, m in found] != [it.modality for it in conv.media]:
            raise PromptError(
                f"example {index}: the rendered prompt has placeholders {[m for _, m in found]} but the messages carry "
                f"media {[it.modality for it in conv.media]} (did the chat template drop or reorder content?)"
            )
        # each item's turn: between the end-of-turn tokens around its placeholder (question-aware bridges read it)
        ends = [t for t, tid in enumerate(ids) if tid == self.turn_end_id] if self.turn_end_id is not None else []
        for (t, _), item in zip(found, conv.media):
            item.position = t
            labels[t] = IGNORE_INDEX
            item.context = (max([e + 1 for e in ends if e < t], default=0), min([e for e in ends if e > t], default=len(ids)))
        if self.max_length is not None:
            n = len(ids) - len(found) + sum(self.media_tokens(it) for it in conv.media)
            if n > self.max_length:
                raise ContextLengthError(
                    f"example {index}: {len(ids) - len(found)} text tokens + {len(found)} media items "
                    f"({n - len(ids) + len(found)} media tokens) = {n} positions exceed the context of {self.max_length}"
                )
        for item in conv.media:
            if self.load_media:
                item.load()
            else:
                item.check()
        return ids, labels, conv.media

    # -- batch -----------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Any]) -> MultimodalBatch:
        if not examples:
            raise PromptError("cannot collate an empty list of examples")
        return self.assemble([self.encode_example(ex, i) for i, ex in enumerate(examples)], examples)

    def assemble(self, encoded: Sequence[tuple[list[int], list[int], list[MediaItem]]],
                 examples: Sequence[Any] = ()) -> MultimodalBatch:
        """Pad examples already encoded by :meth:`encode_example` into a batch (a trainer can encode each example
        once and assemble batches from those every epoch); sets each item's ``batch_index`` and shifts its
        ``position`` and ``context`` by the padding. ``examples``: the raw examples, kept on the batch."""
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        media: list[MediaItem] = []
        for b, (ids, lab, items) in enumerate(encoded):
            off = width - len(ids) if self.padding_side == "left" else 0
            input_ids[b, off : off + len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[b, off : off + len(ids)] = 1
            labels[b, off : off + len(ids)] = torch.tensor(lab, dtype=torch.long)
            for item in items:
                item.batch_index = b
                item.position += off
                if item.context is not None:
                    item.context = (item.context[0] + off, item.context[1] + off)
                media.append(item)
        return MultimodalBatch(
            input_ids=input_ids,
            attention_mask=attention,
            labels=None if self.add_generation_prompt else labels,
            media=media,
            padding_side=self.padding_side,
            examples=list(examples),
        )



def _media_tokens_without_model(item: MediaItem) -> int:
    # without a model the bridge is unknown: the deprecated count a spec may still carry, else the placeholder itself
    return legacy_query_tokens(item.spec) or 1
