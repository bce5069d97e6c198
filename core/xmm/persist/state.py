"""Run state (optimiser, scheduler, RNG) saved without pickle: tensors in safetensors, the structure in JSON.

``torch.save`` / ``torch.load`` pickle, and a pickle runs code when it is loaded: a run folder from anywhere must never
be able to do that. :func:`save_state` splits a state tree into ``<name>.safetensors`` (every tensor and numpy array)
and ``<name>.json`` (the structure, with the plain values); :func:`load_state` rebuilds it from data only.

The tree may hold dicts (any str / int / float / bool / None keys), lists, tuples, str, int, float, bool, None,
``torch.Tensor`` and numeric ``numpy.ndarray`` values: what optimiser, LR-scheduler, Python, numpy and torch
generator states are made of. Anything else is refused when saving, and anything unexpected in the files is a
:class:`~xmm.errors.CheckpointError` naming the file, never executed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmm.errors import CheckpointError, MediaError
from xmm.io import atomic_write
from xmm.limits import check_file, check_json_depth, read_file

if TYPE_CHECKING:
    import torch

FORMAT = "xmm-state"
VERSION = 1
STATE_JSON_BYTES = 64 << 20  # the structure only; tensors live in the safetensors file
STATE_JSON_DEPTH = 32  # optimiser / scheduler / RNG states nest 4-6 levels
_NUMPY_KINDS = frozenset("biuf")  # bool, signed, unsigned, float: never object or structured dtypes


def state_files(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``(<name>.json, <name>.safetensors)`` inside ``directory``."""
    d = Path(directory)
    return d / f"{name}.json", d / f"{name}.safetensors"


def has_state(directory: str | os.PathLike[str], name: str) -> bool:
    """True when ``directory`` holds the JSON part of state ``name`` (a file, of any kind: loading checks it)."""
    return os.path.lexists(state_files(directory, name)[0])


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, Any] = {}

    def _tensor(self, t: torch.Tensor) -> str:
        key = f"t{len(self.tensors)}"
        # a copy of each: safetensors refuses tensors that share storage, and the saved values must not move
        self.tensors[key] = t.detach().to("cpu", copy=True).contiguous()
        return key

    def encode(self, obj: Any, where: str) -> Any:
        import numpy as np
        import torch

        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"$float": repr(obj)}
        if isinstance(obj, torch.Tensor):
            return {"$tensor": self._tensor(obj)}
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in _NUMPY_KINDS:
                raise CheckpointError(f"{where}: cannot save a numpy array of dtype {obj.dtype}")
            raw = torch.frombuffer(bytearray(np.ascontiguousarray(obj).tobytes()), dtype=torch.uint8)
            return {"$ndarray": self._tensor(raw), "dtype": obj.dtype.str, "shape": list(obj.shape)}
        if isinstance(obj, np.generic):
            return self.encode(obj.item(), where)
        if isinstance(obj, tuple):
            return {"$tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            pairs = []
            for k, v in obj.items():
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise CheckpointError(f"{where}: cannot save a dict key of type {type(k).__name__}")
                pairs.append([self.encode(k, where), self.encode(v, f"{where}[{k!r}]")])
            return {"$dict": pairs}
        raise CheckpointError(f"{where}: cannot save a value of type {type(obj).__name__} (only tensors, arrays, "
                              "numbers, strings, lists, tuples and dicts)")


def save_state(obj: Any, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``obj`` as ``<name>.safetensors`` + ``<name>.json`` in ``directory`` (each atomically); returns both."""
    from safetensors.torch import save_file

    enc = _Encoder()
    tree = enc.encode(obj, name)
    doc = {"format": FORMAT, "version": VERSION, "tree": tree}
    json_path, tensors_path = state_files(directory, name)
    Path(directory).mkdir(parents=True, exist_ok=True)
    atomic_write(tensors_path, lambda p: save_file(enc.tensors, str(p), metadata={"format": "pt", "xmm": FORMAT}))
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n"
    atomic_write(json_path, lambda p: p.write_text(text, encoding="utf-8"))
    return json_path, tensors_path


class _Decoder:
    def __init__(self, tensors: dict[str, Any], source: Path) -> None:
        self.tensors = tensors
        self.source = source
        self.used: set[str] = set()

    def fail(self, where: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: {where}: {problem}")

    def tensor(self, key: Any, where: str) -> Any:
        if not isinstance(key, str) or key not in self.tensors:
            raise self.fail(where, f"names tensor {key!r}, which the safetensors file does not hold")
        self.used.add(key)
        return self.tensors[key]

    def decode(self, node: Any, where: str) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, dict) or len(node) == 0:
            raise self.fail(where, f"unexpected {type(node).__name__} in the state structure")
        tag = next(iter(node))
        if tag == "$tensor" and len(node) == 1:
            return self.tensor(node[tag], where)
        if tag == "$float" and len(node) == 1 and node[tag] in ("nan", "inf", "-inf"):
            return float(node[tag])
        if tag == "$tuple" and len(node) == 1 and isinstance(node[tag], list):
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(node[tag]))
        if tag == "$dict" and len(node) == 1 and isinstance(node[tag], list):
            out: dict[Any, Any] = {}
            for pair in node[tag]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise self.fail(where, "a dict entry must be a [key, value] pair")
                key = self.decode(pair[0], where)
                if not (key is None or isinstance(key, (bool, int, float, str))):
                    raise self.fail(where, f"a dict key must be a plain value, got {type(key).__name__}")
                out[key] = self.decode(pair[1], f"{where}[{key!r}]")
            return out
        if tag == "$ndarray" and set(node) == {"$ndarray", "dtype", "shape"}:
            return self.ndarray(node, where)
        raise self.fail(where, f"unknown entry {sorted(node)[:3]} in the state structure")

    def ndarray(self, node: dict[str, Any], where: str) -> Any:
        import numpy as np

        raw = self.tensor(node["$ndarray"], where)
        try:
            dtype = np.dtype(node["dtype"]) if isinstance(node["dtype"], str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in _NUMPY_KINDS:
            raise self.fail(where, f"array dtype {node['dtype']!r} is not a plain numeric type")
        shape = node["shape"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise self.fail(where, f"array shape {shape!r} is not a list of sizes")
        data = raw.numpy().tobytes()
        if math.prod(shape) * dtype.itemsize != len(data):
            raise self.fail(where, f"array of shape {shape} and dtype {dtype} does not match its {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def load_state(directory: str | os.PathLike[str], name: str) -> Any:
    """The tree :func:`save_state` wrote as ``name`` in ``directory``. Every problem (a missing or special file,
    malformed JSON, a structure that names a missing tensor, a tampered safetensors header) is a
    :class:`CheckpointError` naming the file; nothing in the files is ever executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_path, tensors_path = state_files(directory, name)
    try:
        raw = read_file(json_path, max_bytes=STATE_JSON_BYTES, what="state file")
        check_file(tensors_path, max_bytes=1 << 62, what="state tensors file")
        check_json_depth(raw, max_depth=STATE_JSON_DEPTH, source=json_path, what="the state structure")
    except MediaError as e:
        raise CheckpointError(str(e).removeprefix("input ")) from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not an xmm state file (expected \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{json_path}: state format version {doc.get('version')!r} is not {VERSION}")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{tensors_path}: cannot read the state tensors ({e})") from None
    dec = _Decoder(tensors, json_path)
    return dec.decode(doc.get("tree"), name)
