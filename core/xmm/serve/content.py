"""OpenAI chat messages -> xmm messages: text made safe, media parts decoded and validated, before any model work.

Accepted content parts: ``text``; ``image_url`` (``data:`` URLs; local paths and ``file://`` URLs only inside the
server's ``--allow-files`` folder); ``input_audio`` (base64 ``data`` + ``format``); and for every modality the model
has, its own part ``{"type": NAME, NAME: VALUE}`` or ``{"type": "NAME_url", "NAME_url": {"url": ...}}``, where VALUE is
a ``data:`` URL, ``{"url": ...}``, ``{"data": BASE64}`` or, for structured modalities such as device telemetry, the
JSON itself. Which modality a URL or an audio clip feeds is read from the registry's modality specs (their file
extensions, or the MIME type's major part), never from a fixed list. Every media item is decoded by its modality's
own loader here, so a bad file is a 400 naming the part, not a failure in the middle of a batch.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from xmm.errors import MediaError, XmmError
from xmm.limits import max_file_bytes, read_file
from xmm.model.messages import MediaItem
from xmm.serve.config import ServeConfig
from xmm.serve.errors import APIError, bad_request, from_xmm_error
from xmm.textguard import TextGuard, control_tokens

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Prompt:
    """One conversation ready for the collator: string-content messages whose placeholders are exactly ``media``
    (loaded) in order; ``chars`` is the length of the text it holds."""

    messages: list[dict[str, str]]
    media: list[MediaItem]
    chars: int

    def example(self) -> dict[str, Any]:
        return {"messages": self.messages, "media": list(self.media)}


class ContentReader:
    """Reads requests for one model: its modality specs, its tokenizer's control tokens and the server limits."""

    def __init__(self, model: Any, config: ServeConfig) -> None:
        self.specs = dict(model.specs)
        self.config = config
        # placeholders are guarded too: over the API, media come only as parts, so "<image>" typed in text is text
        tokens = control_tokens(model.tokenizer) | {s.placeholder for s in self.specs.values()}
        self.guard = TextGuard(frozenset(tokens), config.control_tokens)  # type: ignore[arg-type]

    # -- messages -----------------------------------------------------------------------------------------------
    def read(self, messages: list[Any]) -> Prompt:
        out: list[dict[str, str]] = []
        media: list[MediaItem] = []
        chars = 0
        for i, msg in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(msg, Mapping):
                raise bad_request(f"{where} must be an object with 'role' and 'content'", param=where)
            role = msg.get("role")
            if role not in ROLES:
                raise bad_request(f"{where}.role {str(role)[:40]!r} is not supported; use one of {', '.join(ROLES)}",
                                  param=f"{where}.role", code="unsupported_value")
            if msg.get("tool_calls") or msg.get("function_call"):
                raise bad_request("tool calls are not supported by this model", param=f"{where}.tool_calls",
                                  code="unsupported_value")
            pieces = self._content(msg.get("content"), where, media)
            text = "".join(pieces)
            chars += sum(len(p) for p in pieces)
            if chars > self.config.max_prompt_chars:
                raise bad_request(f"the messages hold more than {self.config.max_prompt_chars:,} characters of text",
                                  param="messages", code="prompt_too_long")
            out.append({"role": ROLES[role], "content": text})
        if out[-1]["role"] == "assistant":
            raise bad_request("the last message is the assistant's; nothing to answer",
                              param=f"messages[{len(out) - 1}]")
        return Prompt(out, media, chars)

    def _content(self, content: Any, where: str, media: list[MediaItem]) -> list[str]:
        if content is None:
            return []
        if isinstance(content, str):
            return [self._text(content, f"{where}.content")]
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of content parts", param=f"{where}.content")
        pieces: list[str] = []
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise bad_request(f"{pwhere} must be an object with a 'type'", param=pwhere)
            kind = part["type"]
            if kind in ("text", "refusal"):
                value = part.get(kind)
                if not isinstance(value, str):
                    raise bad_request(f"{pwhere}.{kind} must be a string", param=f"{pwhere}.{kind}")
                pieces.append(self._text(value, f"{pwhere}.{kind}"))
                continue
            if len(media) >= self.config.max_media_items:
                raise bad_request(f"more than {self.config.max_media_items} media parts in one request", param=pwhere,
                                  code="too_many_media")
            item = self._media_part(part, kind, pwhere)
            media.append(item)
            pieces.append(item.placeholder)
        return pieces

    def _text(self, text: str, where: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"{where} is not valid Unicode (a lone surrogate)", param=where,
                              code="invalid_text") from None
        try:
            return self.guard.apply(text, where=where)
        except XmmError as e:
            raise from_xmm_error(e, param=where) from None

    # -- media ---------------------------------------------------------------------------------------------------
    def _media_part(self, part: Mapping[str, Any], kind: str, where: str) -> MediaItem:
        if kind == "image_url":
            data, mime, ext = self._from_url(part.get("image_url"), f"{where}.image_url")
            modality = self._pick(mime, ext, part.get("modality"), where, default="image")
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
                raise bad_request(f"{where}.input_audio needs 'data' (base64) and 'format'",
                                  param=f"{where}.input_audio")
            fmt = str(audio.get("format") or "wav").lower().lstrip(".")
            data = _b64(audio["data"], f"{where}.input_audio.data")
            mime = mimetypes.types_map.get(f".{fmt}") or f"audio/{fmt}"
            modality = self._pick(mime, f".{fmt}", part.get("modality"), where, audio=True)
        elif kind in self.specs:
            modality = kind
            data, _, _ = self._value(part.get(kind), f"{where}.{kind}", modality)
        elif kind.endswith("_url") and kind[: -len("_url")] in self.specs:
            modality = kind[: -len("_url")]
            data, _, _ = self._from_url(part.get(kind), f"{where}.{kind}")
        else:
            known = ["text", "image_url", "input_audio", *sorted(self.specs), *(f"{m}_url" for m in sorted(self.specs))]
            raise bad_request(f"{where}: content part type {kind[:40]!r} is not a modality of this model; it accepts "
                              f"{', '.join(known)}", param=f"{where}.type", code="unsupported_modality")
        limit = max_file_bytes(modality)
        if len(data) > limit:
            raise APIError(413, f"{where}: the {modality} input is {len(data):,} bytes, over the limit of {limit:,}",
                           param=where, code="media_too_large")
        if not data:
            raise bad_request(f"{where}: the {modality} input is empty", param=where, code="invalid_media")
        item = MediaItem(modality, data, self.specs[modality])
        try:
            item.load()  # decode and validate now, with the modality's own loader
        except XmmError as e:
            raise from_xmm_error(e, param=where) from None
        return item

    def _value(self, value: Any, where: str, modality: str) -> tuple[bytes, str | None, str | None]:
        """A modality part's value: data URL / {"url"} / {"data": base64} / the JSON itself."""
        if isinstance(value, str) or (isinstance(value, Mapping) and "url" in value):
            return self._from_url(value, where)
        if isinstance(value, Mapping) and isinstance(value.get("data"), str) and len(value) <= 2 and \
                set(value) <= {"data", "format"}:
            return _b64(value["data"], f"{where}.data"), None, None
        if value is None:
            raise bad_request(f"{where} is missing (the part needs its '{modality}' value)", param=where)
        # structured input (e.g. device telemetry): the JSON as the modality's loader reads a file of it
        return json.dumps(value).encode("utf-8"), "application/json", ".json"

    def _from_url(self, value: Any, where: str) -> tuple[bytes, str | None, str | None]:
        """``data:`` URL -> bytes; a path or ``file://`` URL -> bytes of a file inside ``allow_files``."""
        url = value.get("url") if isinstance(value, Mapping) else value
        if not isinstance(url, str) or not url:
            raise bad_request(f"{where} needs a 'url' string", param=where)
        if url.startswith("data:"):
            return _data_url(url, f"{where}.url" if isinstance(value, Mapping) else where)
        if url.startswith(("http://", "https://", "ftp://")):
            raise bad_request(f"{where}: remote URLs are not fetched by this server; send the media as a data: URL",
                              param=where, code="unsupported_url")
        return self._local_file(unquote(url[len("file://"):]) if url.startswith("file://") else url, where)

    def _local_file(self, name: str, where: str) -> tuple[bytes, str | None, str | None]:
        root = self.config.allow_files
        if root is None:
            raise bad_request(f"{where}: file paths are not accepted by this server (start it with --allow-files DIR), "
                              "send the media as a data: URL", param=where, code="files_not_allowed")
        path = (root / name).resolve()  # an absolute name replaces root; symlinks are followed before the check
        if path != root and root not in path.parents:
            raise APIError(403, f"{where}: the path is outside the folder this server may read", param=where,
                           type="permission_error", code="path_not_allowed")
        ext = path.suffix.lower() or None
        modalities = [m for m, s in self.specs.items() if ext and ext in s.file_extensions]
        try:
            data = read_file(path, modality=modalities[0] if len(modalities) == 1 else None)
        except MediaError as e:
            # name the path as the client gave it, not where it resolved to on this machine
            raise bad_request(f"{where}: {str(e).split(': ', 1)[-1]}", param=where, code="invalid_media") from None
        return data, mimetypes.guess_type(path.name)[0], ext

    def _pick(self, mime: str | None, ext: str | None, hint: Any, where: str, *, default: str | None = None,
              audio: bool = False) -> str:
        """The modality for media of ``mime``/``ext``: the part's ``modality`` hint, else the modality whose file
        extensions (or name, as the MIME major type) match, else ``default``."""
        if hint is not None:
            if hint not in self.specs:
                raise bad_request(f"{where}.modality {str(hint)[:40]!r} is not a modality of this model (it has "
                                  f"{', '.join(sorted(self.specs)) or 'none'})", param=f"{where}.modality",
                                  code="unsupported_modality")
            return str(hint)
        exts = {e.lower() for e in ([ext] if ext else []) + (mimetypes.guess_all_extensions(mime) if mime else [])}
        found = [m for m, s in self.specs.items() if exts & {e.lower() for e in s.file_extensions}]
        major = mime.split("/", 1)[0] if mime else None
        if not found and major in self.specs:
            found = [major]
        if len(found) > 1 and audio and self.config.audio_modality in found:
            return str(self.config.audio_modality)
        if len(found) > 1 and major in found:
            return str(major)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise bad_request(f"{where}: {mime or ext} fits several modalities of this model ({', '.join(found)}); say "
                              "which with \"modality\" in the part", param=where, code="ambiguous_modality")
        if default in self.specs and mime is None:
            return str(default)
        raise bad_request(f"{where}: no modality of this model takes {mime or ext or 'this input'} (it has "
                          f"{', '.join(sorted(self.specs)) or 'none'})", param=where, code="unsupported_modality")


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where} is not valid base64", param=where, code="invalid_base64") from None


def _data_url(url: str, where: str) -> tuple[bytes, str | None, str | None]:
    header, sep, payload = url[len("data:"):].partition(",")
    if not sep:
        raise bad_request(f"{where}: a data: URL needs a ',' before its data", param=where, code="invalid_data_url")
    fields = [f.strip().lower() for f in header.split(";")]
    mime = fields[0] or None
    data = _b64(payload, where) if "base64" in fields[1:] else unquote_to_bytes(payload)
    ext = mimetypes.guess_extension(mime) if mime else None
    return data, mime, ext

