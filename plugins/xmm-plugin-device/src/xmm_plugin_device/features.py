"""Feature specs and featurisation of a :class:`DeviceWindow` into per-snapshot tensors.

A numeric feature reads a value at a dotted ``path`` of the snapshot (``battery.level``, ``storage.free_percent``,
``extra_numeric.fan_rpm`` or a field of a user subclass) and scales it by its declared range to about [0, 1]; a
categorical feature maps a string (or bool) to an embedding index. Absent values (``None``, missing keys) get a
presence flag of 0, so the encoder can tell "absent" from "zero".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from xmm_plugin_device.schema import DEFAULT_APPS, LOCATION_PERMISSIONS, NETWORK_TYPES, DeviceStatus, DeviceWindow

# seconds are compressed with log1p and scaled so that one day maps to 1.0
_DAY_LOG = math.log1p(86400.0)
# normalised values beyond the declared range are clipped here, so one wild reading cannot dominate the encoder
_CLIP = (-1.0, 2.0)
TIME_FEATURES = 3  # log gap to the previous snapshot, log age relative to the latest one, is-latest flag



class NumericFeature(BaseModel):
    """A number at ``path``; ``(x - min) / (max - min)`` is what the encoder sees (bools count as 0/1)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    path: str = Field(min_length=1)
    min: float = 0.0
    max: float = 100.0

    @model_validator(mode="after")
    def _range(self) -> NumericFeature:
        if not self.max > self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        return self


class CategoricalFeature(BaseModel):
    """A string (or bool) at ``path`` embedded by value. Unknown values share ``hash_buckets`` stable buckets
    (or one "unknown" row when 0), matched case-insensitively."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    path: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)
    hash_buckets: int = Field(default=0, ge=0, le=4096)

    @property
    def vocab_size(self) -> int:
        # rows: 0 absent, 1 unknown, then the hash buckets, then the declared values
        return 2 + self.hash_buckets + len(self.values)

    def index(self, value: Any) -> int:
        if value is None:
            return 0
        key = _category_key(value)
        try:
            return 2 + self.hash_buckets + [v.lower() for v in self.values].index(key)
        except ValueError:
            pass
        if self.hash_buckets == 0:
            return 1
        # sha1, not hash(): Python salts str hashes per process, which would change the bucket between runs
        digest = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")
        return 2 + digest % self.hash_buckets


def _category_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


DEFAULT_NUMERIC: tuple[NumericFeature, ...] = (
    NumericFeature(name="battery_level", path="battery.level"),
    NumericFeature(name="temperature", path="temperature", min=0.0, max=80.0),
    NumericFeature(name="cpu_load", path="cpu_load"),
    NumericFeature(name="memory_load", path="memory_load"),
    NumericFeature(name="storage_free", path="storage.free_percent"),
    NumericFeature(name="signal", path="network.signal"),
    NumericFeature(name="brightness", path="screen.brightness"),
    NumericFeature(name="volume", path="volume"),
)

# flags are categories ("true"/"false"): an embedding per state is read as easily as the network type
DEFAULT_CATEGORICAL: tuple[CategoricalFeature, ...] = (
    CategoricalFeature(name="charging", path="battery.charging", values=["false", "true"]),
    CategoricalFeature(name="screen_on", path="screen.on", values=["false", "true"]),
    CategoricalFeature(name="network_type", path="network.type", values=list(NETWORK_TYPES)),
    CategoricalFeature(name="location_permission", path="location_permission", values=list(LOCATION_PERMISSIONS)),
    CategoricalFeature(name="foreground_app", path="foreground_app", values=list(DEFAULT_APPS), hash_buckets=16),
)


def resolve_path(snapshot: Any, path: str) -> Any:
    """The value at dotted ``path`` of a snapshot (attributes of models, keys of dicts); ``None`` when absent."""
    obj = snapshot
    for part in path.split("."):
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            obj = obj.get(part)
        else:
            obj = getattr(obj, part, None)
    return obj


def _numeric(value: Any, spec: NumericFeature) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise TypeError(f"feature '{spec.name}' at '{spec.path}' is not a number: {value!r}")
    x = (float(value) - spec.min) / (spec.max - spec.min)
    return min(max(x, _CLIP[0]), _CLIP[1])


def featurize(
    window: DeviceWindow | Sequence[DeviceStatus],
    numeric: Sequence[NumericFeature],
    categorical: Sequence[CategoricalFeature],
) -> dict[str, torch.Tensor]:
    """Per-snapshot tensors for a window of T snapshots (N numeric, C categorical features).

    Returns ``numeric [T, N]`` (scaled values, 0 where absent), ``present [T, N]`` (1 where a value exists),
    ``delta [T, N]`` (change since the previous snapshot in scaled units, 0 when either is absent),
    ``time [T, 3]`` (log gap to the previous snapshot, log age relative to the latest, is-latest) and
    ``categorical [T, C]`` long indices.
    """
    snaps = list(window.snapshots if isinstance(window, DeviceWindow) else window)
    t = len(snaps)
    values = torch.zeros(t, len(numeric))
    present = torch.zeros(t, len(numeric))
    cats = torch.zeros(t, len(categorical), dtype=torch.long)
    for i, snap in enumerate(snaps):
        for j, spec in enumerate(numeric):
            x = _numeric(resolve_path(snap, spec.path), spec)
            if x is not None:
                values[i, j] = x
                present[i, j] = 1.0
        for j, cspec in enumerate(categorical):
            cats[i, j] = cspec.index(resolve_path(snap, cspec.path))
    delta = torch.zeros_like(values)
    if t > 1:
        both = present[1:] * present[:-1]
        delta[1:] = (values[1:] - values[:-1]) * both
    times = torch.zeros(t, TIME_FEATURES)
    if t:
        stamps = [s.timestamp.timestamp() for s in snaps]
        for i in range(t):
            gap = stamps[i] - stamps[i - 1] if i else 0.0
            times[i, 0] = math.log1p(max(gap, 0.0)) / _DAY_LOG
            times[i, 1] = math.log1p(max(stamps[-1] - stamps[i], 0.0)) / _DAY_LOG
        times[-1, 2] = 1.0
    return {"numeric": values, "present": present, "delta": delta, "time": times, "categorical": cats}
