"""Parsing of values with units in device telemetry: temperatures, percentages and byte sizes.

Each parser returns a plain float in the schema's canonical unit (degrees Celsius, percent, gigabytes) or raises
``ValueError`` with a message that pydantic attaches to the field being validated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_NUMBER_UNIT = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s].*?)?\s*$")

TEMPERATURE_UNITS = {"c": "C", "°c": "C", "celsius": "C", "f": "F", "°f": "F", "fahrenheit": "F", "k": "K", "kelvin": "K"}
BYTE_UNITS = {
    "b": 1e-9, "kb": 1e-6, "mb": 1e-3, "gb": 1.0, "tb": 1e3,
    "kib": 1024 / 1e9, "mib": 1024**2 / 1e9, "gib": 1024**3 / 1e9, "tib": 1024**4 / 1e9,
}


def _number(value: Any) -> float:
    # bool is an int subclass: a True where a number belongs is a wrong type, not 1
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number (got {value!r})")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"must be a finite number (got {value!r})")
    return x


def split_value_unit(value: Any) -> tuple[float, str | None]:
    """``41.5`` -> (41.5, None); ``"41.5C"`` -> (41.5, "C"); ``{"value": 41.5, "unit": "C"}`` -> (41.5, "C")."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"value", "unit"}
        if unknown or "value" not in value:
            raise ValueError("must be a number, a string like '41.5C' or {'value': .., 'unit': ..}")
        unit = value.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise ValueError(f"unit must be a string (got {unit!r})")
        return _number(value["value"]), unit
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if not m:
            raise ValueError("must be a number or a number with a unit like '41.5C'")
        return float(m.group(1)), m.group(2)
    return _number(value), None


def parse_temperature(value: Any) -> float:
    """Degrees Celsius from a number (Celsius) or a value with unit C, F or K."""
    x, unit = split_value_unit(value)
    if unit is None:
        return x
    canon = TEMPERATURE_UNITS.get(unit.strip().lower())
    if canon is None:
        raise ValueError(f"unknown temperature unit {unit!r} (use C, F or K)")
    if canon == "F":
        return (x - 32.0) * 5.0 / 9.0
    if canon == "K":
        return x - 273.15
    return x


def parse_percent(value: Any) -> float:
    """Percent from a number or a string like ``"45%"``; any other unit is rejected."""
    x, unit = split_value_unit(value)
    if unit is not None and unit.strip() not in {"%", "percent", "pct"}:
        raise ValueError(f"unknown unit {unit!r} for a percentage (use a number 0-100 or '45%')")
    return x


def parse_gigabytes(value: Any) -> float:
    """Gigabytes (10^9 bytes) from a number (GB) or a value with unit B, KB, MB, GB, TB, KiB, MiB, GiB, TiB."""
    x, unit = split_value_unit(value)
    if unit is None:
        return x
    factor = BYTE_UNITS.get(unit.strip().lower())
    if factor is None:
        raise ValueError(f"unknown storage unit {unit!r} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    return x * factor


def check_celsius(value: float) -> float:
    """Range check after unit conversion, so the message shows the converted value and its unit."""
    if not -40.0 <= value <= 130.0:
        raise ValueError(f"must be between -40 and 130 °C (got {value:.4g} °C)")
    return value
