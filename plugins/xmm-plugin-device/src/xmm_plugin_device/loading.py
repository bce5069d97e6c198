"""Reading device telemetry from JSON / JSON-lines files, bytes, dicts, lists and pydantic objects.

:func:`load_window` returns a validated :class:`~xmm_plugin_device.schema.DeviceWindow` (snapshots sorted by time,
only the last ``max_snapshots`` kept). Bad input raises a typed :mod:`xmm.errors` error that names the input and,
for schema violations, the field path, e.g. ``snapshots[2].battery.level: must be <= 100 (got 140)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError, SchemaError
from xmm.limits import check_json_depth, max_file_bytes, read_file

from xmm_plugin_device.schema import DeviceStatus, DeviceWindow

MODALITY = "device"
DEFAULT_MAX_SNAPSHOTS = 32
MAX_FILE_BYTES = max_file_bytes(MODALITY)

# (label, record): label is the prefix of error paths ("snapshots[2]", "line 3" or "" for a single snapshot)
Record = tuple[str, Any]


def load_window(
    raw: Any,
    *,
    schema: type[DeviceStatus] = DeviceStatus,
    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
) -> DeviceWindow:
    """Validate ``raw`` into a time-ordered window of at most ``max_snapshots`` snapshots (the most recent ones).

    ``raw``: a path (``.json`` with one snapshot, a list, or ``{"snapshots": [...]}``; ``.jsonl`` with one snapshot
    per line), the bytes of such a file, a JSON string, a dict, a list of dicts, a ``DeviceStatus`` (or list of
    them) or a ``DeviceWindow``. Raises :class:`~xmm.errors.SchemaError` (naming the field),
    :class:`~xmm.errors.CorruptMediaError` (unreadable JSON) or :class:`~xmm.errors.EmptyMediaError`.
    """
    if max_snapshots < 1:
        raise ValueError(f"max_snapshots must be >= 1 (got {max_snapshots})")
    source = raw if isinstance(raw, (str, Path, bytes, bytearray, memoryview)) else None
    records = _records(raw, source)
    if not records:
        raise EmptyMediaError("holds no device snapshots", source=source, modality=MODALITY)
    snapshots = [_validate(label, rec, schema, source) for label, rec in records]
    # a stable sort keeps the given order of equal timestamps
    snapshots.sort(key=lambda s: s.timestamp)
    return DeviceWindow.model_construct(snapshots=snapshots[-max_snapshots:])


def _records(raw: Any, source: Any) -> list[Record]:
    if isinstance(raw, DeviceWindow):
        return _from_list(raw.snapshots, source)
    if isinstance(raw, DeviceStatus):
        return [("", raw)]
    if isinstance(raw, Path) or (isinstance(raw, str) and not raw.lstrip().startswith(("{", "["))):
        return _from_file(Path(raw))
    if isinstance(raw, str):
        return _from_text(raw, source, jsonl=None)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptMediaError(f"is not UTF-8 JSON: {e.reason} at byte {e.start}", source=source, modality=MODALITY) from e
        return _from_text(text, source, jsonl=None)
    if isinstance(raw, Mapping):
        return _from_json(raw, source)
    if isinstance(raw, Sequence):
        return _from_list(raw, source)
    raise MediaError(
        f"cannot read device status from a {type(raw).__name__}; pass a .json/.jsonl path, bytes, a dict, a list "
        "of dicts or DeviceStatus objects",
        source=raw,
        modality=MODALITY,
    )


def _from_file(path: Path) -> list[Record]:
    # stat first: a directory, FIFO, device or an over-limit file is refused without being opened or read
    data = read_file(path, max_bytes=MAX_FILE_BYTES, modality=MODALITY, what="telemetry file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptMediaError(f"is not UTF-8 JSON: {e.reason} at byte {e.start}", source=path, modality=MODALITY) from e
    suffix = path.suffix.lower()
    return _from_text(text, path, jsonl=True if suffix in {".jsonl", ".ndjson"} else (False if suffix == ".json" else None))


def _from_text(text: str, source: Any, *, jsonl: bool | None) -> list[Record]:
    """Parse JSON (``jsonl=False``), JSON lines (``True``) or whichever fits (``None``: JSON first)."""
    if not text.strip():
        raise EmptyMediaError("is empty", source=source, modality=MODALITY)
    try:
        check_json_depth(text, what="telemetry JSON")
    except MediaError as e:
        raise CorruptMediaError(str(e).removeprefix("input: "), source=source, modality=MODALITY) from e
    if jsonl is not True:
        try:
            return _from_json(json.loads(text), source)
        except json.JSONDecodeError as e:
            # several JSON objects on separate lines fail as JSON with "Extra data"; read them as JSON lines
            if jsonl is False or "Extra data" not in e.msg:
                raise CorruptMediaError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", source=source, modality=MODALITY) from e
    records: list[Record] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise CorruptMediaError(f"line {n}: invalid JSON at column {e.colno}: {e.msg}", source=source, modality=MODALITY) from e
    return records


def _from_json(data: Any, source: Any) -> list[Record]:
    if isinstance(data, list):
        return _from_list(data, source)
    if not isinstance(data, Mapping):
        raise SchemaError(f"must be a snapshot object or a list of them (got {type(data).__name__})", source=source, modality=MODALITY)
    if "snapshots" in data:
        unknown = sorted(set(data) - {"snapshots"})
        if unknown:
            raise _schema_error(unknown[0], "unknown field (a window has only 'snapshots')", source)
        if not isinstance(data["snapshots"], list):
            raise _schema_error("snapshots", f"must be a list (got {type(data['snapshots']).__name__})", source)
        return _from_list(data["snapshots"], source)
    return [("", data)]


def _from_list(items: Sequence[Any], source: Any) -> list[Record]:
    return [(f"snapshots[{i}]", item) for i, item in enumerate(items)]


def _validate(label: str, record: Any, schema: type[DeviceStatus], source: Any) -> DeviceStatus:
    if isinstance(record, schema):
        return record
    if isinstance(record, DeviceStatus):
        record = record.model_dump(serialize_as_any=True)  # another schema class: revalidate its data
    if not isinstance(record, Mapping):
        raise _schema_error(label, f"must be a snapshot object (got {type(record).__name__})", source)
    try:
        return schema.model_validate(record)
    except ValidationError as e:
        err = e.errors()[0]
        path = _join(label, err["loc"])
        raise _schema_error(path, describe_error(err, _lookup(record, err["loc"])), source) from e


def _schema_error(path: str, message: str, source: Any) -> SchemaError:
    message = message if len(message) <= 300 else message[:297] + "..."
    err = SchemaError(f"{path}: {message}" if path else message, source=source, modality=MODALITY)
    err.field = path
    return err


def _join(label: str, loc: Sequence[Any]) -> str:
    parts = [label + ":"] if label.startswith("line") else ([label] if label else [])
    for p in loc:
        if p == "[key]":  # pydantic marks errors in a dict key this way; the path already names the key
            continue
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts and not parts[-1].endswith(":") else (" " if parts else "")) + str(p))
    return "".join(parts)


_MISSING = object()


def _lookup(data: Any, loc: Sequence[Any]) -> Any:
    for key in loc:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return _MISSING
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = repr(value)
    # a field's value, never a file's worth of it: messages go to logs and training summaries
    return text if len(text) <= 60 else text[:57] + "..."


def describe_error(err: Mapping[str, Any], original: Any = _MISSING) -> str:
    """A short message for one pydantic error: ``must be <= 100 (got 140)``; shows the raw input when a unit was
    converted (``got '300F' = 148.9``)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    bounds = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        msg = f"must be {bounds[kind]} {_fmt(limit)}"
    elif kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return msg if "(got" in msg else f"{msg} (got {_fmt(value)})"
    elif kind == "literal_error":
        msg = f"must be one of {ctx.get('expected', '?')}"
    elif kind.startswith("bool"):
        msg = "must be true or false"
    elif kind.startswith(("float", "int")):
        msg = "must be a number"
    elif kind.startswith("string_pattern"):
        msg = f"field names must match {ctx.get('pattern')}"
    elif kind.startswith("string"):
        msg = "must be a string" if kind == "string_type" else err["msg"].lower()
    elif kind.startswith(("datetime", "date")):
        msg = "must be an ISO 8601 timestamp or seconds since the epoch"
    elif kind in {"model_type", "model_attributes_type", "dict_type"}:
        msg = "must be an object"
    else:
        msg = err["msg"]
    if original is not _MISSING and original != value and not isinstance(original, Mapping | list):
        return f"{msg} (got {_fmt(original)} = {_fmt(value)})"
    return f"{msg} (got {_fmt(value)})"
