"""Loading and validation of device telemetry: formats, units, errors that name the field."""

from __future__ import annotations

import json

import pytest
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError, SchemaError
from xmm_plugin_device.loading import load_window
from xmm_plugin_device.schema import DeviceStatus, DeviceWindow


def _window(make_snapshot, n=3):
    return [make_snapshot(f"2024-05-01T12:0{i}:00Z", battery={"level": 50 - i, "charging": False}) for i in range(n)]


def test_all_input_forms_give_the_same_window(tmp_path, make_snapshot):
    snaps = _window(make_snapshot)
    (tmp_path / "list.json").write_text(json.dumps(snaps))
    (tmp_path / "obj.json").write_text(json.dumps({"snapshots": snaps}))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(s) for s in snaps) + "\n\n")
    forms = [
        tmp_path / "list.json",
        str(tmp_path / "obj.json"),
        tmp_path / "lines.jsonl",
        json.dumps(snaps).encode(),
        "\n".join(json.dumps(s) for s in snaps).encode(),  # JSON lines as bytes
        snaps,
        {"snapshots": snaps},
        [DeviceStatus.model_validate(s) for s in snaps],
    ]
    hashes = {load_window(f).fingerprint() for f in forms}
    assert len(hashes) == 1
    w = load_window(forms[0])
    assert isinstance(w, DeviceWindow) and len(w) == 3 and w.latest.battery.level == 48


def test_single_snapshot_and_object_input(make_snapshot):
    w = load_window(make_snapshot())
    assert len(w) == 1 and w.latest.network.type == "wifi"
    assert len(load_window(DeviceStatus.model_validate(make_snapshot()))) == 1


def test_units_are_normalised_and_fingerprint_ignores_the_unit(make_snapshot):
    celsius = load_window(make_snapshot(temperature=40.0, storage={"used": 64, "total": 128}, volume=40))
    other = load_window(make_snapshot(temperature="104F", storage={"used": "64000MB", "total": "128GB"}, volume="40%"))
    kelvin = load_window(make_snapshot(temperature={"value": 313.15, "unit": "K"}))
    assert other.latest.temperature == pytest.approx(40.0)
    assert kelvin.latest.temperature == pytest.approx(40.0)
    assert other.latest.storage.used == pytest.approx(64.0)
    assert celsius.fingerprint() == other.fingerprint()
    assert load_window(make_snapshot(network={"type": "LTE"})).latest.network.type == "4g"


def test_sorted_by_time_and_truncated_to_the_latest(make_snapshot):
    snaps = _window(make_snapshot, 5)[::-1]
    w = load_window(snaps, max_snapshots=2)
    assert [s.battery.level for s in w.snapshots] == [47, 46]
    epoch = load_window([make_snapshot(1714564800), make_snapshot(1714564700)])
    assert epoch.snapshots[0].timestamp < epoch.snapshots[1].timestamp
    assert epoch.latest.timestamp.tzinfo is not None


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"battery": {"level": 140}}, "snapshots[2].battery.level", "must be <= 100 (got 140)"),
        ({"temperature": "41X"}, "snapshots[2].temperature", "unknown temperature unit 'X'"),
        ({"temperature": "300F"}, "snapshots[2].temperature", "148.9 °C"),
        ({"storage": {"used": "2TB", "total": "128GB"}}, "snapshots[2].storage", "exceeds total"),
        ({"storage": {"used": "2PB", "total": "128GB"}}, "snapshots[2].storage.used", "unknown storage unit 'PB'"),
        ({"volume": "40dB"}, "snapshots[2].volume", "unknown unit 'dB'"),
        ({"battery": {"level": True}}, "snapshots[2].battery.level", "must be a number"),
        ({"battery": {"level": 5, "charging": "maybe"}}, "snapshots[2].battery.charging", "true or false"),
        ({"network": {"type": "satellite"}}, "snapshots[2].network.type", "must be one of"),
        ({"screen": {"on": True, "brightness": -5}}, "snapshots[2].screen.brightness", "must be >= 0"),
        ({"timestamp": "yesterday"}, "snapshots[2].timestamp", "ISO 8601"),
        ({"gps": [1, 2]}, "snapshots[2].gps", "unknown field"),
        ({"extra_numeric": {"fan": "fast"}}, "snapshots[2].extra_numeric.fan", "must be a number"),
    ],
)
def test_errors_name_the_field_and_the_file(tmp_path, make_snapshot, patch, field, words):
    snaps = _window(make_snapshot)
    snaps[2].update(patch)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(snaps))
    with pytest.raises(SchemaError) as info:
        load_window(path)
    assert info.value.field == field
    msg = str(info.value)
    assert f"{field}:" in msg and words in msg and "bad.json" in msg and msg.startswith("device input")


def test_single_snapshot_errors_have_no_index_and_jsonl_names_the_line(tmp_path, make_snapshot):
    with pytest.raises(SchemaError, match=r"device input: battery\.level: must be <= 100"):
        load_window(make_snapshot(battery={"level": 101}))
    with pytest.raises(SchemaError, match="timestamp: is required"):
        load_window({"battery": {"level": 5}})
    lines = tmp_path / "w.jsonl"
    lines.write_text(json.dumps(make_snapshot()) + "\n" + json.dumps(make_snapshot(cpu_load=-1)) + "\n")
    with pytest.raises(SchemaError, match=r"w\.jsonl'?: line 2: cpu_load: must be >= 0"):
        load_window(lines)


def test_unreadable_inputs_raise_typed_errors(tmp_path, make_snapshot):
    (tmp_path / "broken.json").write_text('{"timestamp": ')
    with pytest.raises(CorruptMediaError, match="broken.json.*invalid JSON"):
        load_window(tmp_path / "broken.json")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EmptyMediaError, match="empty"):
        load_window(tmp_path / "empty.jsonl")
    with pytest.raises(EmptyMediaError):
        load_window([])
    with pytest.raises(MediaError, match="file not found"):
        load_window(tmp_path / "missing.json")
    with pytest.raises(SchemaError, match=r"snapshots\[1\]: must be a snapshot object"):
        load_window([make_snapshot(), 3])
    with pytest.raises(SchemaError, match="'device' : unknown field|device: unknown field"):
        load_window({"snapshots": [make_snapshot()], "device": "x"})
    with pytest.raises(MediaError, match="cannot read device status from a int"):
        load_window(3)


def test_users_extend_with_extras_and_subclasses(make_snapshot):
    w = load_window(make_snapshot(extra_numeric={"fan_rpm": 2300}, extra_categorical={"dock": "desk"}))
    assert w.latest.extra_numeric == {"fan_rpm": 2300.0}

    class CarStatus(DeviceStatus):
        fuel_level: float | None = None

    car = load_window(make_snapshot(fuel_level=33.0), schema=CarStatus)
    assert car.latest.fuel_level == 33.0
    assert "fuel_level" in car.canonical_json()
    with pytest.raises(SchemaError, match="fuel_level: unknown field"):
        load_window(make_snapshot(fuel_level=33.0))
