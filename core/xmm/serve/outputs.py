"""What the decoders produced for an answer, as JSON content parts: media (images, audio, video) as ``data:`` URLs in
the part shape a request would use (``{"type": "image_url", "image_url": {"url": ...}}``, or ``{"type": NAME,
NAME: {"url": ...}}``), results (device commands) as ``{"type": NAME, NAME: {...}}`` with their JSON description."""

from __future__ import annotations

import base64
import dataclasses
import mimetypes
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_DEPTH = 8


def output_parts(outputs: Mapping[str, list[Any]] | None) -> list[dict[str, Any]]:
    """``GenerationResult.all_outputs[i]`` (modality -> produced outputs) -> a list of content parts."""
    parts: list[dict[str, Any]] = []
    for modality, items in (outputs or {}).items():
        for item in items:
            url = _media_url(item)
            if url is not None:
                kind = "image_url" if modality == "image" else f"{modality}_url"
                parts.append({"type": kind, "modality": modality, kind: {"url": url}})
            else:
                parts.append({"type": modality, "modality": modality, modality: _describe(item)})
    return parts


def _media_url(item: Any) -> str | None:
    """The output as a data: URL when its decoder writes files; None for results that are not media."""
    if getattr(item, "kind", "media") == "result":
        return None
    with tempfile.TemporaryDirectory(prefix="xmm-serve-") as tmp:
        try:
            path = Path(item.save(Path(tmp) / "output"))
        except NotImplementedError:
            return None
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _describe(item: Any) -> Any:
    describe = getattr(item, "describe", None)
    if callable(describe):
        return jsonable(describe())
    return jsonable(getattr(item, "value", item))


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of ``value``: dataclasses and pydantic models as objects, exceptions as their message."""
    if depth > MAX_DEPTH:
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BaseException):
        return str(value)
    if hasattr(value, "model_dump"):
        try:
            return jsonable(value.model_dump(mode="json"), depth + 1)
        except Exception:  # noqa: BLE001 - a model that cannot dump itself is still described
            return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v, depth + 1) for v in value]
    return str(value)
