"""Parsing Hugging Face multimodal chat messages into template-ready text plus an ordered list of media items.

A message's ``content`` is a string or a list of parts ``{"type": "text", "text": ...}`` / ``{"type": <modality>,
"path" | "bytes" | <modality>: ...}``. Each media part becomes its modality's placeholder token in the flattened text
that the LLM's chat template renders. A placeholder written literally inside a text part (``"<image> what is it?"``)
is filled, in order, from media passed separately; every mismatch is a :class:`~xmm.errors.PromptError`.

Media paths of a conversation with a ``base_dir`` (a manifest's folder or a dataset's media root) are untrusted: they
must resolve inside it (:class:`xmm.paths.PathRoot`: no ``../``, absolute paths elsewhere, ``~``, ``file://`` or
symlinks out) unless ``allow_outside_paths``; a refused path is an :class:`~xmm.errors.UnsafePathError` and is never
opened. Without a ``base_dir`` (a path the user typed, an API call) paths are taken as given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.errors import MediaError, MediaTooLargeError, PromptError
from xmm.limits import check_file, max_file_bytes
from xmm.modality import ModalitySpec
from xmm.paths import PathRoot

# a role is rendered verbatim by chat templates: only plain names, so that a role cannot carry control text
_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$")

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
        """Cheap validation without decoding or opening: a path must be a readable regular file within the
        modality's size limit (a directory, FIFO, device or socket is named as what it is), bytes must be non-empty
        and within the limit."""
        src = self.source
        if isinstance(src, (str, Path)):
            check_file(src, modality=self.modality)
            try:  # readable? (non-blocking: a path swapped for a FIFO after the stat must not hang the open)
                os.close(os.open(src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
            except OSError as e:
                raise MediaError(f"cannot read file: {e.strerror or e}", source=src, modality=self.modality) from None
        elif isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise MediaError("empty bytes", source=src, modality=self.modality)
            limit = max_file_bytes(self.modality)
            if len(src) > limit:
                raise MediaTooLargeError(f"is {len(src):,} bytes, over the limit of {limit:,} for {self.modality} input",
                                         source=src, modality=self.modality)

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
                # the library's message is left out: some quote the bytes they could not parse
                raise MediaError(f"cannot load: {type(e).__name__} in the {self.modality} loader", source=self.source,
                                 modality=self.modality) from e
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
                    return value  # resolved (and, inside a base_dir, refused unless allowed) by _resolve
                raise PromptError(f"{modality} part: only local 'file://' urls are supported, got {value[:200]!r}")
            return value
    raise PromptError(
        f"{modality} part has no media: give one of 'path', 'bytes' or '{modality}' (an in-memory object); got keys {sorted(part)}"
    )


def _resolve(source: Any, root: PathRoot | None, modality: str) -> Any:
    """A path source made a :class:`Path`: confined to ``root`` when there is one, else taken as given."""
    if not isinstance(source, (str, Path)):
        return source
    if root is not None:
        return root.confine(source, modality=modality)
    text = str(source)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser()


def media_from_part(part: Mapping[str, Any], specs: Mapping[str, ModalitySpec], base_dir: Path | None = None, *,
                    allow_outside_paths: bool = False) -> MediaItem:
    """A ``MediaItem`` from one media part (``{"type": "image", "path": ...}``); raises for unknown modalities, and
    :class:`~xmm.errors.UnsafePathError` for a path that leaves ``base_dir`` (see the module docstring)."""
    kind = part.get("type")
    if kind not in specs:
        raise PromptError(f"content part of type {str(kind)[:80]!r} is not a modality of this model (known: {sorted(specs)})")
    root = PathRoot(base_dir, allow_outside_paths) if base_dir is not None else None
    return MediaItem(kind, _resolve(_part_source(part, kind), root, kind), specs[kind])


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
    allow_outside_paths: bool = False,
) -> ParsedConversation:
    """Flatten ``messages`` to string content with placeholders and collect the media items in order.

    ``messages`` may be a plain string (one user turn). ``media`` (parts like ``{"type": "image", "path": ...}`` or
    :class:`MediaItem`) fills placeholders written literally in text parts, in order of appearance; a literal
    placeholder with nothing left to fill it, or media left over, raises :class:`PromptError`. Paths resolve inside
    ``base_dir`` when it is given (unless ``allow_outside_paths``).
    """
    base = Path(base_dir) if base_dir is not None else None
    outside = bool(allow_outside_paths)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise PromptError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    pending = [m if isinstance(m, MediaItem) else media_from_part(m, specs, base, allow_outside_paths=outside)
               for m in (media or [])]
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
            raise PromptError(f"message {i} must be a dict with 'role' and 'content', got {type(msg).__name__}")
        if not isinstance(msg["role"], str) or not _ROLE.fullmatch(msg["role"]):
            raise PromptError(f"message {i}: the role must be a plain name like 'user' or 'assistant', "
                              f"got {str(msg['role'])[:40]!r}")
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
                item = media_from_part(part, specs, base, allow_outside_paths=outside)
                items.append(item)
                pieces.append(item.placeholder)
        out_msgs.append({"role": str(msg["role"]), "content": "".join(pieces)})
    if pending:
        names = ", ".join(f"{it.modality} {it.source if isinstance(it.source, (str, Path)) else type(it.source).__name__}" for it in pending)
        raise PromptError(f"{len(pending)} media item(s) have no placeholder in the messages: {names}")
    return ParsedConversation(out_msgs, items)
