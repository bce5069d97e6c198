"""A reader (and, for tests, a writer) of CTranslate2's ``model.bin`` binary format, without ctranslate2 installed.

Layout (little endian; strings are ``uint16`` length incl. the trailing NUL, then the bytes)::

    uint32 binary_version            (1..6)
    string spec_name, uint32 spec_revision           (binary_version >= 2)
    uint32 num_variables, then per variable:
        string name; uint8 rank; uint32 dims[rank]
        uint8 dtype_id; uint32 num_bytes             (binary_version >= 4)
        uint8 item_size; uint32 num_items            (older: 4 = float32, 2 = int16, 1 = int8)
        raw data
    uint32 num_aliases, then (string alias, string target) pairs          (binary_version >= 3)

dtype ids follow ctranslate2's ``DataType``: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Quantised
weights (int8/int16) come with a ``<name>_scale`` variable and dequantise as ``weight / scale`` (int8: one scale per
output row; int16: one scale for the tensor).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from xmm.errors import CheckpointError

MAX_BINARY_VERSION = 6
DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
_LEGACY_ITEM_SIZES = {4: torch.float32, 2: torch.int16, 1: torch.int8}
_DTYPE_IDS = {v: k for k, v in DTYPES.items()}


@dataclass
class CT2Model:
    """The content of a ``model.bin``: spec name/revision, variables (tensors with their stored dtype) and aliases."""

    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def raw(self, name: str) -> torch.Tensor:
        """The stored tensor named ``name`` (aliases resolved), in its stored dtype."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise CheckpointError(f"CTranslate2 model ({self.spec}) has no variable '{name}'")
        return self.variables[target]

    def float(self, name: str) -> torch.Tensor:
        """``name`` as float32, dequantised with ``<name>_scale`` when it is stored as int8/int16."""
        value = self.raw(name)
        if value.dtype in (torch.int8, torch.int16):
            scale_name = f"{self.aliases.get(name, name)}_scale"
            if scale_name not in self.variables:
                raise CheckpointError(f"quantised variable '{name}' has no '{scale_name}'")
            scale = self.variables[scale_name].float()
            if scale.dim() == 1 and value.dim() >= 1:
                scale = scale.reshape(-1, *([1] * (value.dim() - 1)))
            return value.float() / scale
        return value.float()

    def scalar(self, name: str) -> int | float:
        """A 0-d attribute (flags, head counts) as a Python number."""
        return self.raw(name).item()

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.variables if n.startswith(prefix))


def read_ct2_model(paths: str | Path | Iterable[str | Path]) -> CT2Model:
    """Parse a ``model.bin`` (or the ordered parts of a split one, concatenated in memory)."""
    parts = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    try:
        buf = bytearray()
        for p in parts:
            buf += p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read CTranslate2 model {', '.join(map(str, parts))}: {e}") from e
    return parse_ct2_model(buf, source=", ".join(map(str, parts)))


def parse_ct2_model(buf: bytearray, *, source: str = "model.bin") -> CT2Model:
    """Parse the bytes of a ``model.bin``; tensors share memory with ``buf``."""
    reader = _Reader(buf, source)
    version = reader.u32()
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise CheckpointError(f"{source}: unsupported CTranslate2 binary version {version} (this reader knows 1..{MAX_BINARY_VERSION})")
    spec, revision = ("", 1)
    if version >= 2:
        spec, revision = reader.string(), reader.u32()
    variables: dict[str, torch.Tensor] = {}
    for _ in range(reader.u32()):
        name = reader.string()
        rank = reader.u8()
        shape = [reader.u32() for _ in range(rank)]
        if version >= 4:
            type_id = reader.u8()
            if type_id not in DTYPES:
                raise CheckpointError(f"{source}: variable '{name}' has unknown dtype id {type_id}")
            dtype, num_bytes = DTYPES[type_id], reader.u32()
        else:
            item = reader.u8()
            if item not in _LEGACY_ITEM_SIZES:
                raise CheckpointError(f"{source}: variable '{name}' has unknown item size {item}")
            dtype = _LEGACY_ITEM_SIZES[item]
            num_bytes = reader.u32() * item
        variables[name] = reader.tensor(num_bytes, dtype, shape, name)
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(reader.u32()):
            alias = reader.string()
            aliases[alias] = reader.string()
    if reader.pos != len(buf):
        raise CheckpointError(f"{source}: {len(buf) - reader.pos} unexpected bytes after the model (truncated or corrupt parts?)")
    return CT2Model(version, spec, revision, variables, aliases)


def write_ct2_model(path: str | Path, spec: str, spec_revision: int, variables: Mapping[str, torch.Tensor], aliases: Mapping[str, str] | None = None) -> Path:
    """Write ``variables`` in the binary version 6 layout (used by tests to round-trip small models)."""
    out = bytearray(struct.pack("<I", MAX_BINARY_VERSION))
    out += _string(spec) + struct.pack("<I", spec_revision) + struct.pack("<I", len(variables))
    for name, value in variables.items():
        value = value.detach().contiguous().cpu()
        out += _string(name) + struct.pack("<B", value.dim()) + struct.pack(f"<{value.dim()}I", *value.shape)
        data = value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b""
        out += struct.pack("<B", _DTYPE_IDS[value.dtype]) + struct.pack("<I", len(data)) + data
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


def _string(s: str) -> bytes:
    data = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(data)) + data


class _Reader:
    def __init__(self, buf: bytearray, source: str) -> None:
        self.buf, self.source, self.pos = buf, source, 0

    def _take(self, n: int, what: str) -> int:
        if self.pos + n > len(self.buf):
            raise CheckpointError(f"{self.source} is truncated: needed {n} bytes for {what} at offset {self.pos}, file has {len(self.buf)}")
        start = self.pos
        self.pos += n
        return start

    def u8(self) -> int:
        return self.buf[self._take(1, "a uint8")]

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self._take(4, "a uint32"))[0]

    def string(self) -> str:
        n = struct.unpack_from("<H", self.buf, self._take(2, "a string length"))[0]
        start = self._take(n, "a string")
        return bytes(self.buf[start : start + n]).split(b"\0", 1)[0].decode("utf-8")

    def tensor(self, num_bytes: int, dtype: torch.dtype, shape: list[int], name: str) -> torch.Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = 1
        for d in shape:
            count *= d
        if count * itemsize != num_bytes:
            raise CheckpointError(f"{self.source}: variable '{name}' {shape} {dtype} should take {count * itemsize} bytes, header says {num_bytes}")
        start = self._take(num_bytes, f"variable '{name}'")
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self.buf, dtype=dtype, count=count, offset=start).reshape(shape)
