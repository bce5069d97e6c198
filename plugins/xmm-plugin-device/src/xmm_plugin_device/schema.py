"""Pydantic schema of one device-status snapshot (``DeviceStatus``) and of a time window of them (``DeviceWindow``).

Canonical units after validation: percent (0-100) for levels and loads, degrees Celsius for temperatures, gigabytes
for storage, timezone-aware UTC datetimes for timestamps. Inputs may carry units (``"41.5C"``, ``"106F"``,
``{"value": 310, "unit": "K"}``, ``"64GB"``, ``"45%"``); an unknown unit, a value out of range, a wrong type or an
unknown field is a validation error at that field.

Users extend the schema in two ways: free ``extra_numeric`` / ``extra_categorical`` maps on every snapshot, or a
subclass of :class:`DeviceStatus` with typed fields (pass it as ``schema=`` to the loader). Either way the encoder
featurises the new fields once they are declared in its config (``extra_numeric`` / ``extra_categorical`` feature
specs with a dotted ``path``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from xmm_plugin_device.units import _number, check_celsius, parse_gigabytes, parse_percent, parse_temperature

NETWORK_TYPES = ("none", "wifi", "ethernet", "2g", "3g", "4g", "5g")
LOCATION_PERMISSIONS = ("granted", "while_in_use", "denied")
# the foreground apps the default encoder has an embedding row for (others share hash buckets)
DEFAULT_APPS = (
    "home", "browser", "maps", "camera", "music", "video", "game", "chat", "email", "settings", "phone", "social",
    "navigation", "fitness", "photos", "store",
)
_NETWORK_ALIASES = {"wi-fi": "wifi", "wlan": "wifi", "lte": "4g", "nr": "5g", "offline": "none", "cellular": "4g"}


def _network_type(value: Any) -> Any:
    if isinstance(value, str):
        v = value.strip().lower()
        return _NETWORK_ALIASES.get(v, v)
    return value


def _utc(value: datetime) -> datetime:
    # naive timestamps are taken as UTC so that windows from different sources sort and subtract consistently
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _timestamp_input(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be an ISO 8601 string or seconds since the epoch (got {value!r})")
    return value


Percent = Annotated[float, BeforeValidator(parse_percent), Field(ge=0, le=100)]
Celsius = Annotated[float, BeforeValidator(parse_temperature), AfterValidator(check_celsius)]
Gigabytes = Annotated[float, BeforeValidator(parse_gigabytes), Field(ge=0, le=1e6)]
Number = Annotated[float, BeforeValidator(_number)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp_input), AfterValidator(_utc)]
NetworkType = Annotated[Literal["none", "wifi", "ethernet", "2g", "3g", "4g", "5g"], BeforeValidator(_network_type)]
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Battery(_Strict):
    """Battery charge in percent and whether it is charging."""

    level: Percent
    charging: StrictBool = False


class Storage(_Strict):
    """Used and total storage in gigabytes (accepts ``"64GB"``, ``"512MiB"``...)."""

    used: Gigabytes
    total: Annotated[float, BeforeValidator(parse_gigabytes), Field(gt=0, le=1e6)]

    @model_validator(mode="after")
    def _used_fits(self) -> Storage:
        if self.used > self.total:
            raise ValueError(f"used ({self.used:g} GB) exceeds total ({self.total:g} GB)")
        return self

    @property
    def free_percent(self) -> float:
        return 100.0 * (self.total - self.used) / self.total


class Network(_Strict):
    """Connection type and signal strength in percent (``None`` when there is no connection to measure)."""

    type: NetworkType
    signal: Percent | None = None


class Screen(_Strict):
    """Whether the screen is on and its brightness in percent."""

    on: StrictBool = True
    brightness: Percent | None = None


class DeviceStatus(_Strict):
    """One snapshot of a terminal device's status. Only ``timestamp`` is required; absent parts are ``None``."""

    timestamp: Timestamp
    battery: Battery | None = None
    temperature: Celsius | None = Field(default=None, description="device temperature, degrees Celsius")
    cpu_load: Percent | None = None
    memory_load: Percent | None = None
    storage: Storage | None = None
    network: Network | None = None
    screen: Screen | None = None
    volume: Percent | None = None
    location_permission: Literal["granted", "while_in_use", "denied"] | None = None
    foreground_app: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    extra_numeric: dict[FieldName, Number] = Field(default_factory=dict)
    extra_categorical: dict[FieldName, Annotated[str, Field(max_length=64)]] = Field(default_factory=dict)


class DeviceWindow(_Strict):
    """Snapshots of one device in time order (oldest first); at least one."""

    snapshots: list[DeviceStatus] = Field(min_length=1)

    @model_validator(mode="after")
    def _sorted(self) -> DeviceWindow:
        times = [s.timestamp for s in self.snapshots]
        if times != sorted(times):
            raise ValueError("snapshots must be in time order (the loader sorts them)")
        return self

    @property
    def latest(self) -> DeviceStatus:
        return self.snapshots[-1]

    def __len__(self) -> int:
        return len(self.snapshots)

    def canonical_json(self) -> str:
        """Key-sorted compact JSON of the validated window (units already normalised)."""
        # serialize_as_any: snapshots of a user subclass keep their own fields in the hash
        data = self.model_dump(mode="json", serialize_as_any=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def fingerprint(self) -> str:
        """sha256 of :meth:`canonical_json`: equal telemetry gives equal hashes whatever the input format."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()
