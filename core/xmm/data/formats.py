"""One record of a user's dataset -> xmm's native chat messages (Hugging Face multimodal parts, media resolved).

Two families of records:

- **parts** (``xmm``, ``openai``): ``messages`` whose ``content`` is a string or a list of parts. Parts are ``text``,
  a modality's own part (``{"type": "image", "path" | "url" | "bytes" | "image": ...}``), OpenAI's ``image_url``
  (``data:`` URLs or local paths) and ``input_audio`` (base64 + format), and ``{"type": "NAME_url", "NAME_url":
  {"url": ...}}`` for any modality ``NAME`` (``video_url``, ``device_url``...).
- **placeholders** (``llava``, ``sharegpt``): ``conversations`` (``from``/``value``) or ``messages``
  (``role``/``content``) with string content in which ``<image>``, ``<video>``, ``<audio>`` or any modality's own
  placeholder marks where the media of its column go (LLaVA's ``image``/``video``; LLaMA-Factory's ``images``,
  ``videos``, ``audios``; LLaMA-Factory's alpaca ``instruction``/``input``/``output``/``history``). A modality's
  columns are its name and its plural (``device``/``devices``), plus ``ModalitySpec.data_columns`` when a plugin
  declares them. Media of a modality with no placeholder at all go first in the first user turn (LLaVA's habit);
  otherwise the counts must match.

A media value is a path (confined by :class:`~xmm.data.paths.MediaRoot`), a ``data:`` URL, bytes, a
``{"bytes", "path"}`` dict (how ``datasets`` stores Image/Audio columns), a member of the same webdataset sample,
or an in-memory object (a dict of telemetry, an array) handed to the modality's loader as is.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmm.data.errors import DataError, RecordTooLargeError
from xmm.data.limits import DataLimits
from xmm.data.paths import MediaRoot
from xmm.data.stores import Member
from xmm.modality import ModalitySpec

STYLES = ("xmm", "openai", "llava", "sharegpt")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "bot": "assistant", "system": "system"}
# native top-level keys that are not passed on as extras
_RESERVED = ("messages", "base_dir", "source", "media")


def plural(name: str) -> str:
    """English plural of a modality name, the column LLaMA-Factory-style datasets use (``speech`` -> ``speeches``)."""
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    if len(name) > 1 and name.endswith("y") and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def media_columns(spec: ModalitySpec) -> tuple[str, ...]:
    """Record keys that hold a modality's media, in order of preference."""
    declared = tuple(getattr(spec, "data_columns", ()) or ())
    return (*declared, plural(spec.name), spec.name)


@dataclass
class Context:
    """What converting one record needs: the model's modalities, where media resolve, the limits, column names.

    ``columns`` maps a canonical key (``messages``, ``conversations``, ``system``, ``images``, ``instruction``...)
    to the record's own column name. ``members`` serves the files of a webdataset sample by name and extension.
    """

    specs: Mapping[str, ModalitySpec]
    root: MediaRoot
    limits: DataLimits = field(default_factory=DataLimits)
    columns: Mapping[str, str] = field(default_factory=dict)
    input_audio_modality: str = "audio"
    members: Mapping[str, Member] | None = None

    def __post_init__(self) -> None:
        placeholders = sorted((re.escape(s.placeholder) for s in self.specs.values()), key=len, reverse=True)
        self.pattern = re.compile("|".join(placeholders)) if placeholders else None
        self.by_placeholder = {s.placeholder: name for name, s in self.specs.items()}


@dataclass
class Converted:
    """A record in native form: messages (parts with resolved media), extra top-level keys, the style it had."""

    messages: list[dict[str, Any]]
    extra: dict[str, Any]
    style: str
    num_media: int = 0


def detect_style(record: Mapping[str, Any]) -> str:
    """Which family a record belongs to (``xmm``, ``openai``, ``llava`` or ``sharegpt``), from its keys."""
    msgs = record.get("messages")
    if isinstance(msgs, list):
        for m in msgs:
            content = m.get("content") if isinstance(m, Mapping) else None
            if isinstance(content, list):
                types = {str(p.get("type")) for p in content if isinstance(p, Mapping)}
                return "openai" if any(t == "input_audio" or t.endswith("_url") for t in types) else "xmm"
        return "sharegpt"
    if "messages" in record:
        return "xmm"  # not a list: the converter says so, naming the field
    if "conversations" in record:
        singular = any(isinstance(record.get(k), str) for k in ("image", "video"))
        return "llava" if singular else "sharegpt"
    if "instruction" in record:
        return "sharegpt"
    keys = sorted(str(k) for k in record)[:12]
    raise DataError(f"cannot tell the format of a record with keys {keys}: expected 'messages', 'conversations' "
                    "or 'instruction' (map your columns with `columns:`)")


def rename_columns(record: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """The record with ``columns`` applied: canonical key <- the record's column. A column a record lacks leaves the
    canonical key absent too (rows without images often have no images column)."""
    out = dict(record)
    for canonical, actual in columns.items():
        if actual in record:
            out[canonical] = record[actual]
        else:
            out.pop(canonical, None)
    return out


def convert(record: Any, style: str, ctx: Context, media_files: Sequence[tuple[str, Member]] | None = None) -> Converted:
    """Convert one parsed record; ``style`` is one of :data:`STYLES` or ``auto`` (detected per record).

    ``media_files``: a webdataset sample's other files as ``(extension, reader)``; in the placeholder family a
    modality with no column of its own takes those whose extension is one of its ``file_extensions``. Raises
    :class:`~xmm.data.errors.DataError` (or a subclass) naming the field at fault.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    if ctx.columns:
        record = rename_columns(record, ctx.columns)
    if style == "auto":
        style = detect_style(record)
    if media_files and style in ("llava", "sharegpt"):
        record = _with_files(record, media_files, ctx)
    counter = _MediaCounter(ctx.limits.max_media_items)
    if style in ("xmm", "openai"):
        msgs = record.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise DataError("needs a non-empty list of messages", field="messages")
        messages = _part_messages(msgs, ctx, counter)
        extra = {k: v for k, v in record.items() if k not in _RESERVED and isinstance(k, str)}
    elif style in ("llava", "sharegpt"):
        messages = _placeholder_messages(record, ctx, counter)
        extra = {k: record[k] for k in ("id", "meta") if k in record}
    else:
        raise DataError(f"unknown format {style!r}; choose one of auto, {', '.join(STYLES)}", field="format")
    return Converted(messages, extra, style, counter.n)


# -- media values ----------------------------------------------------------------------------------------------------
class _MediaCounter:
    def __init__(self, limit: int) -> None:
        self.n, self.limit = 0, limit

    def add(self, part: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        if self.n > self.limit:
            raise RecordTooLargeError(f"more than max_media_items={self.limit} media items")
        return part


def _check_inline(n: int, modality: str, ctx: Context, where: str) -> None:
    limit = ctx.limits.inline_limit(modality)
    if n > limit:
        raise RecordTooLargeError(f"inline {modality} of {n:,} bytes is over the limit of {limit:,}", field=where)


def _b64(payload: str, modality: str, ctx: Context, where: str) -> bytes:
    _check_inline(len(payload) * 3 // 4, modality, ctx, where)  # on the encoded length, before decoding
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("is not valid base64", field=where) from None
    if not data:
        raise DataError("holds no data", field=where)
    return data


def _data_url(url: str, modality: str, ctx: Context, where: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise DataError("malformed data: URL (no ',')", field=where)
    if head.lower().endswith(";base64"):
        return _b64(payload, modality, ctx, where)
    _check_inline(len(payload), modality, ctx, where)
    data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise DataError("empty data: URL", field=where)
    return data


def _from_string(modality: str, value: str, ctx: Context, where: str) -> dict[str, Any]:
    if value[:5].lower() == "data:":
        return {"type": modality, "bytes": _data_url(value, modality, ctx, where)}
    if ctx.members is not None and value in ctx.members:
        member = ctx.members[value]
        _check_inline(member.size, modality, ctx, where)
        return {"type": modality, "bytes": member()}
    return {"type": modality, "path": str(ctx.root.resolve(value, field=where, modality=modality))}


def _is_numbers(value: Sequence[Any]) -> bool:
    return bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def media_part(modality: str, value: Any, ctx: Context, where: str) -> dict[str, Any]:
    """One media value -> a native part ``{"type": modality, "path" | "bytes" | modality: ...}``."""
    if isinstance(value, str):
        return _from_string(modality, value, ctx, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        _check_inline(len(value), modality, ctx, where)
        if not len(value):
            raise DataError("empty bytes", field=where)
        return {"type": modality, "bytes": bytes(value)}
    if isinstance(value, Mapping):
        keys = set(value)
        if keys and keys <= {"bytes", "path"}:  # a `datasets` Image/Audio/Video column, undecoded
            if value.get("bytes") is not None:
                return media_part(modality, value["bytes"], ctx, f"{where}.bytes")
            if value.get("path"):
                return media_part(modality, str(value["path"]), ctx, f"{where}.path")
            raise DataError("has neither bytes nor a path", field=where)
        if keys == {"url"} or (keys <= {"url", "detail"} and "url" in keys):
            if not isinstance(value["url"], str):
                raise DataError("'url' must be a string", field=where)
            return _from_string(modality, value["url"], ctx, f"{where}.url")
    if isinstance(value, (list, tuple)) and _is_numbers(value):
        return {"type": modality, modality: np.asarray(value, dtype=np.float32)}
    if value is None:
        raise DataError("is null", field=where)
    return {"type": modality, modality: value}


def _items(value: Any) -> list[Any]:
    """A media column's value as a list of items (one path, a list of paths, one raw array...)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and not _is_numbers(value):
        return list(value)
    return [value]


def _with_files(record: Mapping[str, Any], files: Sequence[tuple[str, Member]], ctx: Context) -> Mapping[str, Any]:
    out = dict(record)
    for name, spec in ctx.specs.items():
        if any(record.get(c) is not None for c in media_columns(spec)):
            continue
        exts = {e.lower() for e in spec.file_extensions}
        mine = [member for ext, member in files if "." + ext.rpartition(".")[2].lower() in exts]
        for member in mine:
            _check_inline(member.size, name, ctx, member.name)
        if mine:
            out[plural(name)] = [member() for member in mine]
    return out


# -- parts family ----------------------------------------------------------------------------------------------------
def _part(part: Any, ctx: Context, where: str, counter: _MediaCounter) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
        raise DataError("a part must be an object with a string 'type'", field=where)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise DataError("a text part needs a string 'text'", field=f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "input_audio":
        modality = ctx.input_audio_modality
        if modality not in ctx.specs:
            raise DataError(f"an input_audio part needs the '{modality}' modality (set input_audio_modality to one "
                            f"of {sorted(ctx.specs)})", field=f"{where}.type")
        audio = part.get("input_audio")
        if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
            raise DataError("input_audio needs {'data': base64, 'format': ...}", field=f"{where}.input_audio")
        return counter.add({"type": modality, "bytes": _b64(audio["data"], modality, ctx, f"{where}.input_audio.data")})
    if kind.endswith("_url") and kind[:-4] in ctx.specs:
        modality = kind[:-4]
        value = part.get(kind)
        url = value.get("url") if isinstance(value, Mapping) else value
        if not isinstance(url, str):
            raise DataError(f"{kind} needs {{'url': ...}}", field=f"{where}.{kind}")
        return counter.add(_from_string(modality, url, ctx, f"{where}.{kind}.url"))
    if kind in ctx.specs:
        for key in ("path", "url", "bytes", kind):
            if part.get(key) is not None:
                return counter.add(media_part(kind, part[key], ctx, f"{where}.{key}"))
        raise DataError(f"a {kind} part needs 'path', 'url', 'bytes' or '{kind}'", field=where)
    known = ["text", *sorted(ctx.specs), *(f"{m}_url" for m in sorted(ctx.specs))]
    if "audio" in ctx.specs or ctx.input_audio_modality in ctx.specs:
        known.append("input_audio")
    raise DataError(f"part type {kind!r} is not one of {known}", field=f"{where}.type")


def _part_messages(msgs: list[Any], ctx: Context, counter: _MediaCounter) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise DataError("a message must be an object with a string 'role'", field=where)
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            content = [_part(p, ctx, f"{where}.content[{j}]", counter) for j, p in enumerate(content)]
        elif not isinstance(content, str):
            raise DataError("content must be a string or a list of parts", field=f"{where}.content")
        out.append({"role": m["role"], "content": content})
    return out


# -- placeholder family ----------------------------------------------------------------------------------------------
def _turns(record: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    """``(role, text)`` turns of a placeholder-style record and the key they came from."""
    if "conversations" in record or "messages" in record:
        key = "conversations" if "conversations" in record else "messages"
        conv = record[key]
        if not isinstance(conv, list) or not conv:
            raise DataError("needs a non-empty list of turns", field=key)
        turns = []
        for i, t in enumerate(conv):
            if not isinstance(t, Mapping):
                raise DataError("a turn must be an object", field=f"{key}[{i}]")
            role_key = "from" if "from" in t else "role"
            text_key = "value" if "value" in t else "content"
            role = t.get(role_key)
            if not isinstance(role, str) or role.lower() not in ROLES:
                raise DataError(f"role {role!r} is not one of {sorted(ROLES)}", field=f"{key}[{i}].{role_key}")
            text = t.get(text_key)
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise DataError("must be a string in this format (use format xmm or openai for lists of parts)",
                                field=f"{key}[{i}].{text_key}")
            turns.append((ROLES[role.lower()], text))
        return turns, key
    if "instruction" in record:  # LLaMA-Factory's alpaca format
        turns = []
        history = record.get("history") or []
        if not isinstance(history, list):
            raise DataError("must be a list of [prompt, answer] pairs", field="history")
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise DataError("must be a [prompt, answer] pair of strings", field=f"history[{i}]")
            turns += [("user", pair[0]), ("assistant", pair[1])]
        prompt, extra, answer = record.get("instruction"), record.get("input"), record.get("output")
        for name, value in (("instruction", prompt), ("input", extra), ("output", answer)):
            if value is not None and not isinstance(value, str):
                raise DataError("must be a string", field=name)
        turns.append(("user", (prompt or "") + (f"\n{extra}" if extra else "")))
        if answer is not None:
            turns.append(("assistant", answer))
        return turns, "instruction"
    raise DataError("needs 'conversations', 'messages' or 'instruction'")


def _placeholder_messages(record: Mapping[str, Any], ctx: Context, counter: _MediaCounter) -> list[dict[str, Any]]:
    turns, key = _turns(record)
    system = record.get("system")
    if system and turns[0][0] != "system":
        if not isinstance(system, str):
            raise DataError("must be a string", field="system")
        turns.insert(0, ("system", system))
    # media of each modality, in column order
    queues: dict[str, list[dict[str, Any]]] = {}
    column_of: dict[str, str] = {}
    for name, spec in ctx.specs.items():
        for col in media_columns(spec):
            if record.get(col) is not None:
                items = _items(record[col])
                listed = len(items) != 1 or items[0] is not record[col]
                queues[name] = [counter.add(media_part(name, v, ctx, f"{col}[{j}]" if listed else col))
                                for j, v in enumerate(items)]
                column_of[name] = col
                break
    used = dict.fromkeys(queues, 0)
    contents: list[list[dict[str, Any]]] = []
    for i, (_, text) in enumerate(turns):
        parts: list[dict[str, Any]] = []
        cursor = 0
        for m in ctx.pattern.finditer(text) if ctx.pattern is not None else ():
            modality = ctx.by_placeholder[m.group(0)]
            queue = queues.get(modality, [])
            if used.get(modality, 0) >= len(queue):
                col = column_of.get(modality, plural(modality))
                raise DataError(f"placeholder {m.group(0)} number {used.get(modality, 0) + 1} has no media: "
                                f"'{col}' holds {len(queue)}", field=f"{key}[{i}]")
            if m.start() > cursor:
                parts.append({"type": "text", "text": text[cursor:m.start()]})
            parts.append(queue[used[modality]])
            used[modality] += 1
            cursor = m.end()
        if cursor < len(text) or not parts:
            parts.append({"type": "text", "text": text[cursor:]})
        contents.append(parts)
    leading: list[dict[str, Any]] = []
    for modality, queue in queues.items():
        if used[modality] == 0:
            leading += queue  # no placeholder at all: LLaVA's convention, the media open the first user turn
        elif used[modality] != len(queue):
            raise DataError(f"{len(queue)} {modality} item(s) but {used[modality]} {ctx.specs[modality].placeholder} "
                            "placeholder(s)", field=column_of[modality])
    if leading:
        first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
        if first_user is None:
            raise DataError("media but no user turn to put them in", field=key)
        parts = contents[first_user]
        if len(parts) == 1 and parts[0]["type"] == "text" and not parts[0]["text"]:
            parts.clear()
        contents[first_user] = leading + parts
    out = []
    for (role, _), parts in zip(turns, contents):
        if all(p["type"] == "text" for p in parts):
            out.append({"role": role, "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": role, "content": parts})
    return out
