"""Limits checked before the work: record size before reading, nesting depth before parsing, text before tokenising.

A record over a limit is a counted bad sample (or a typed error), never a crash: ``json.loads`` of a 200,000-deep
line would raise ``RecursionError`` and a 50 MB line would reach the tokenizer.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from xmm import limits as _limits
from xmm.data.errors import InvalidJSONError, NestingTooDeepError, RecordTooLargeError
from xmm.data.scan import BOM


class DataLimits(BaseModel):
    """Per-record limits of a data source (all checked before the expensive step they guard).

    Defaults are xmm's process-wide ones (:mod:`xmm.limits`, raised with ``$XMM_MAX_*``): records carrying media
    inline (OpenAI ``data:`` URLs) may need a larger ``max_record_bytes``. ``max_inline_media_bytes`` None means
    the modality's own file limit (``xmm.limits.max_file_bytes``).
    """

    model_config = ConfigDict(extra="forbid")

    max_record_bytes: int = Field(default_factory=_limits.max_manifest_line_bytes, gt=0,
                                  description="one JSONL line / JSON array element / .json member of a tar")
    max_json_depth: int = Field(default_factory=_limits.max_json_depth, gt=0,
                                description="nesting of arrays and objects in one record")
    max_text_chars: int = Field(default_factory=_limits.max_prompt_chars, gt=0,
                                description="characters of text over all messages of one example")
    max_media_items: int = Field(256, gt=0, description="media parts in one example")
    max_inline_media_bytes: int | None = Field(None, gt=0, description="one data: URL / base64 / embedded item")

    def inline_limit(self, modality: str | None) -> int:
        """Largest inline media item of ``modality``, in bytes."""
        return self.max_inline_media_bytes or _limits.max_file_bytes(modality)


def check_record_size(n: int, limits: DataLimits) -> None:
    """Raise :class:`RecordTooLargeError` for a record of ``n`` bytes over ``limits.max_record_bytes``."""
    if n > limits.max_record_bytes:
        raise RecordTooLargeError(f"record of {n:,} bytes is over max_record_bytes={limits.max_record_bytes:,} "
                                  "(limits.max_record_bytes or $XMM_MAX_MANIFEST_LINE_BYTES raises it)")


def loads(data: bytes, limits: DataLimits) -> Any:
    """Parse one JSON record after checking its size and nesting depth (a BOM at the start is ignored)."""
    check_record_size(len(data), limits)
    if data.startswith(BOM):
        data = data[len(BOM):]
    # every nesting level needs an opening bracket, so few brackets cannot nest deep: skip the scan then
    if data.count(b"[") + data.count(b"{") > limits.max_json_depth:
        depth = _limits.json_depth(data)
        if depth > limits.max_json_depth:
            raise NestingTooDeepError(f"JSON nests {depth} levels deep, over max_json_depth={limits.max_json_depth}")
    try:
        return json.loads(data)
    except UnicodeDecodeError as e:
        raise InvalidJSONError(f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidJSONError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:  # unbalanced brackets can hide depth from the scan; the parser still must not crash us
        raise NestingTooDeepError(f"JSON nests deeper than max_json_depth={limits.max_json_depth}") from None


def text_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of text in native messages (string contents and text parts)."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            n += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return n
