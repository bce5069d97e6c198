"""Parsing Hugging Face multimodal chat messages into template-ready text plus an ordered list of media items.

A message's ``content`` is a string or a list of parts ``{"type": "text", "text": ...}`` / ``{"type": <modality>,
"path" | "bytes" | <modality>: ...}``. Each media part becomes its modality's placeholder token in the flattened text
that the LLM's chat template renders. A placeholder written literally inside a text part (``"<image> what is it?"``)
is filled, in order, from media passed separately; every mismatch is a :class:`~xmm.errors.PromptError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.errors import MediaError, PromptError
from xmm.modality import ModalitySpec

_SOURCE_KEYS = ("path", "bytes", "url")


@dataclass
class MediaItem:
    """One media input: its modality, where it comes from and (once loaded) what ``ModalitySpec.load`` returned.

    ``batch_index``/``position`` say where its placeholder sits in the collated ``input_ids`` (set by the collator);
    ``context`` = ``(start, end)``, the positions of the chat turn that holds it (its instruction or question), for
    bridges that read the text (``Bridge.uses_context``).
    """

    modality: str
    source: Any
    spec: ModalitySpec = field(repr=False)
    batch_index: int = -1
    position: int = -1
    context: tuple[int, int] | None = None
    _loaded: Any = field(default=None, repr=False)
    _is_loaded: bool = field(default=False, repr=False)
    _hash: str | None = field(default=None, repr=False)

    @property
    def placeholder(self) -> str:
        return self.spec.placeholder

    def check(self) -> None:
        """Cheap validation without decoding: a path must be a readable file, bytes must be non-empty."""
        src = self.source
        if isinstance(src, (str, Path)):
            p = Path(src)
            if not p.exists():
                raise MediaError("file not found", source=src, modality=self.modality)
            if not p.is_file():
                raise MediaError("not a file", source=src, modality=self.modality)
            try:
                with open(p, "rb"):
                    pass
            except OSError as e:
                raise MediaError(f"cannot read file: {e.strerror or e}", source=src, modality=self.modality) from e
        elif isinstance(src, (bytes, bytearray, memoryview)) and len(src) == 0:
            raise MediaError("empty bytes", source=src, modality=self.modality)

    def load(self) -> Any:
        """Decode and validate the input with the modality's loader (cached); raises a ``MediaError`` naming it."""
        if not self._is_loaded:
            self.check()
            try:
                self._loaded = self.spec.load(self.source)
            except MediaError as e:
                if e.modality is None:
                    e.modality = self.modality
                raise
            except Exception as e:  # a plugin loader that lets a library error escape: still name the input
                raise MediaError(f"cannot load: {type(e).__name__}: {e}", source=self.source, modality=self.modality) from e
            self._is_loaded = True
        return self._loaded

    @property
    def loaded(self) -> Any:
        return self.load()

    @property
    def is_loaded(self) -> bool:
        return self._is_loaded

    def content_hash(self) -> str:
        """sha256 of the raw input (file bytes, bytes, or the modality's fingerprint of an object)."""
        if self._hash is None:
            self._hash = self.spec.content_hash(self.source)
        return self._hash


@dataclass
class ParsedConversation:
    """Messages with string content (placeholders inlined) ready for ``apply_chat_template``, plus media in order."""

    messages: list[dict[str, str]]
    media: list[MediaItem]


def _part_source(part: Mapping[str, Any], modality: str) -> Any:
    for key in (*_SOURCE_KEYS, modality):
        if key in part and part[key] is not None:
            value = part[key]
            if key == "url" and isinstance(value, str):
                if value.startswith("file://"):
                    return value[len("file://"):]
                raise PromptError(f"{modality} part: only local 'file://' urls are supported, got {value!r}")
            return value
    raise PromptError(
        f"{modality} part has no media: give one of 'path', 'bytes' or '{modality}' (an in-memory object); got keys {sorted(part)}"
    )


def _resolve(source: Any, base_dir: Path | None) -> Any:
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return p
    return source


def media_from_part(part: Mapping[str, Any], specs: Mapping[str, ModalitySpec], base_dir: Path | None = None) -> MediaItem:
    """A ``MediaItem`` from one media part (``{"type": "image", "path": ...}``); raises for unknown modalities."""
    kind = part.get("type")
    if kind not in specs:
        raise PromptError(f"content part of type {kind!r} is not a modality of this model (known: {sorted(specs)})")
    return MediaItem(kind, _resolve(_part_source(part, kind), base_dir), specs[kind])


def _placeholder_pattern(specs: Mapping[str, ModalitySpec]) -> re.Pattern[str] | None:
    if not specs:
        return None
    alts = sorted((re.escape(s.placeholder) for s in specs.values()), key=len, reverse=True)
    return re.compile("|".join(alts))


def parse_conversation(
    messages: Sequence[Mapping[str, Any]] | str,
    specs: Mapping[str, ModalitySpec],
    *,
    media: Sequence[Any] | None = None,
    base_dir: str | Path | None = None,
) -> ParsedConversation:
    """Flatten ``messages`` to string content with placeholders and collect the media items in order.

    ``messages`` may be a plain string (one user turn). ``media`` (parts like ``{"type": "image", "path": ...}`` or
    :class:`MediaItem`) fills placeholders written literally in text parts, in order of appearance; a literal
    placeholder with nothing left to fill it, or media left over, raises :class:`PromptError`.
    """
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise PromptError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    pending = [m if isinstance(m, MediaItem) else media_from_part(m, specs, base) for m in (media or [])]
    by_placeholder = {s.placeholder: name for name, s in specs.items()}
    pattern = _placeholder_pattern(specs)
    out_msgs: list[dict[str, str]] = []
    items: list[MediaItem] = []

    def fill_literals(text: str, where: str) -> None:
        if pattern is None:
            return
        for m in pattern.finditer(text):
            modality = by_placeholder[m.group(0)]
            idx = next((i for i, it in enumerate(pending) if it.modality == modality), None)
            if idx is None:
                raise PromptError(f"{where}: placeholder {m.group(0)} has no {modality} media to fill it")
            items.append(pending.pop(idx))

    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg:
            raise PromptError(f"message {i} must be a dict with 'role' and 'content', got {msg!r:.80}")
        content = msg.get("content")
        where = f"message {i} ({msg['role']})"
        if content is None:
            content = ""
        if isinstance(content, str):
            fill_literals(content, where)
            out_msgs.append({"role": str(msg["role"]), "content": content})
            continue
        if not isinstance(content, Sequence):
            raise PromptError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
        pieces: list[str] = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                part = {"type": "text", "text": part}
            if not isinstance(part, Mapping) or "type" not in part:
                raise PromptError(f"{where}, part {j}: a part must be a dict with a 'type'")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise PromptError(f"{where}, part {j}: text part needs a string 'text'")
                fill_literals(text, f"{where}, part {j}")
                pieces.append(text)
            else:
                item = media_from_part(part, specs, base)
                items.append(item)
                pieces.append(item.placeholder)
        out_msgs.append({"role": str(msg["role"]), "content": "".join(pieces)})
    if pending:
        names = ", ".join(f"{it.modality} {it.source if isinstance(it.source, (str, Path)) else type(it.source).__name__}" for it in pending)
        raise PromptError(f"{len(pending)} media item(s) have no placeholder in the messages: {names}")
    return ParsedConversation(out_msgs, items)
