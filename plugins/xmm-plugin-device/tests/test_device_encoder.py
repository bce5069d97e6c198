"""The trainable device-transformer encoder: features, shapes, masks, training, persistence, registry."""

from __future__ import annotations

import pytest
import torch
from xmm.errors import CheckpointError, ConfigError, ShapeError
from xmm_plugin_device.encoder import DeviceTransformerEncoder
from xmm_plugin_device.features import DEFAULT_NUMERIC, CategoricalFeature, featurize
from xmm_plugin_device.loading import load_window


def _win(make_snapshot, levels, **over):
    return load_window([make_snapshot(f"2024-05-01T12:{i:02d}:00Z", battery={"level": lv, "charging": False}, **over)
                        for i, lv in enumerate(levels)])


def test_featurize_scales_flags_deltas_and_times(make_snapshot):
    w = load_window([
        make_snapshot("2024-05-01T12:00:00Z", battery={"level": 60, "charging": False}, network=None),
        make_snapshot("2024-05-01T12:10:00Z", battery={"level": 50, "charging": True}, foreground_app="unknown-app"),
    ])
    cats = [CategoricalFeature(name="net", path="network.type", values=["wifi", "4g"]),
            CategoricalFeature(name="app", path="foreground_app", values=["maps"], hash_buckets=4),
            CategoricalFeature(name="charging", path="battery.charging", values=["false", "true"])]
    f = featurize(w, DEFAULT_NUMERIC, cats)
    names = [s.name for s in DEFAULT_NUMERIC]
    lvl, sig = names.index("battery_level"), names.index("signal")
    assert f["numeric"].shape == (2, len(names)) and f["time"].shape == (2, 3)
    assert f["numeric"][:, lvl].tolist() == pytest.approx([0.6, 0.5])
    assert f["delta"][1, lvl].item() == pytest.approx(-0.1) and f["delta"][0].abs().sum() == 0
    assert f["categorical"][:, 2].tolist() == [2, 3]  # bools are categories "false"/"true"
    assert f["present"][:, sig].tolist() == [0.0, 1.0] and f["delta"][1, sig] == 0  # absent before: no change
    assert f["time"][1, 0] > 0 and f["time"][0, 1] > f["time"][1, 1] == 0 and f["time"][:, 2].tolist() == [0, 1]
    assert f["categorical"][:, 0].tolist() == [0, 2]  # absent, then "wifi"
    app_first, app_unknown = f["categorical"][:, 1].tolist()
    assert app_first == 2 + 4 + 0 and 2 <= app_unknown < 6  # "maps" row; an unknown app lands in a hash bucket


def test_feature_layout_shapes_and_padding_invariance(make_snapshot):
    torch.manual_seed(0)
    enc = DeviceTransformerEncoder(d_model=32, num_heads=4, num_layers=2).eval()
    n_tokens = 1 + len(enc.numeric_specs) + len(enc.categorical_specs)  # window token + one per feature
    short, long = _win(make_snapshot, [50, 49]), _win(make_snapshot, [60, 58, 57, 55, 54])
    both = enc.encode([short, long])
    assert both.features.shape == (2, n_tokens, 32) and enc.output_dim == 32 and both.mask.all()
    alone = enc.encode([short])
    torch.testing.assert_close(alone.features[0], both.features[0], atol=1e-5, rtol=1e-5)
    # the battery token reflects the latest level: a different latest value changes it
    other = enc.encode([_win(make_snapshot, [50, 10])])
    battery = 1 + [s.name for s in enc.numeric_specs].index("battery_level")
    assert not torch.allclose(other.features[0, battery], alone.features[0, battery])
    with_snaps = DeviceTransformerEncoder(d_model=32, num_heads=4, snapshot_tokens=True).encode([short, long])
    assert with_snaps.features.shape == (2, n_tokens + 5, 32)
    assert with_snaps.mask.sum(1).tolist() == [n_tokens + 2, n_tokens + 5]


def test_snapshot_layout_shapes_masks_and_padding_invariance(make_snapshot):
    torch.manual_seed(0)
    enc = DeviceTransformerEncoder(layout="snapshots", d_model=32, num_heads=4, num_layers=2).eval()
    short, long = _win(make_snapshot, [50, 49]), _win(make_snapshot, [60, 58, 57, 55, 54])
    both = enc.encode([short, long])
    assert both.features.shape == (2, 6, 32)
    assert both.mask.tolist() == [[True] * 3 + [False] * 3, [True] * 6]
    assert both.features[0, 3:].abs().sum() == 0
    alone = enc.encode([short])
    assert alone.features.shape == (1, 3, 32)
    torch.testing.assert_close(alone.features[0], both.features[0, :3], atol=1e-5, rtol=1e-5)
    summary_only = DeviceTransformerEncoder(layout="snapshots", d_model=32, snapshot_tokens=False).encode([short, long])
    assert summary_only.features.shape == (2, 1, 32) and summary_only.mask.all()
    per_snapshot = DeviceTransformerEncoder(layout="snapshots", d_model=32, summary_token=False).encode([short, long])
    assert per_snapshot.mask.sum(1).tolist() == [2, 5]


def test_trainable_until_frozen(make_snapshot):
    enc = DeviceTransformerEncoder(d_model=16, num_heads=2)
    assert enc.trainable and not enc.frozen
    out = enc.encode([_win(make_snapshot, [40, 30])])
    (out.features * torch.randn_like(out.features)).sum().backward()  # a plain sum is constant after LayerNorm
    assert enc.feature_weight.grad is not None and enc.feature_weight.grad.abs().sum() > 0
    enc.freeze()
    assert not enc.encode([_win(make_snapshot, [40])]).features.requires_grad
    enc.train()
    assert not enc.training


def test_learns_a_window_level_rule(make_snapshot):
    """Encoder + linear head separate draining from steady windows (a change across snapshots, not one value)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    wins, labels = [], []
    for _ in range(40):
        start = float(torch.randint(40, 90, (1,), generator=gen))
        drain = bool(torch.rand(1, generator=gen) < 0.5)
        n = int(torch.randint(2, 6, (1,), generator=gen))
        wins.append(_win(make_snapshot, [start - (6 * i if drain else 0) for i in range(n)]))
        labels.append(float(drain))
    enc = DeviceTransformerEncoder(d_model=32, num_heads=4, num_layers=1)
    head = torch.nn.Linear(32, 1)
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=3e-3)
    batch = enc.collate([enc.preprocess(w) for w in wins])
    y = torch.tensor(labels)
    for _ in range(80):
        logits = head(enc(**batch).features[:, 0]).squeeze(-1)  # the summary token
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = ((logits > 0).float() == y).float().mean().item()
    assert acc >= 0.95, (acc, loss.item())


def test_user_fields_are_featurised(make_snapshot):
    enc = DeviceTransformerEncoder(
        d_model=16, num_heads=2,
        extra_numeric=[{"name": "fan", "path": "extra_numeric.fan_rpm", "min": 0, "max": 8000}],
        extra_categorical=[{"name": "dock", "path": "extra_categorical.dock", "values": ["desk", "car"]}],
    )
    w = load_window(make_snapshot(extra_numeric={"fan_rpm": 4000}, extra_categorical={"dock": "car"}))
    item = enc.preprocess(w)
    assert item["numeric"][0, -1].item() == pytest.approx(0.5) and item["present"][0, -1] == 1
    assert item["categorical"][0, -1].item() == 2 + 1  # second declared value
    assert enc.encode([w]).features.shape == (1, 1 + len(enc.numeric_specs) + len(enc.categorical_specs), 16)
    assert enc.preprocess(make_snapshot())["present"][0, -1] == 0  # the field is absent there


def test_save_and_load_roundtrip(tmp_path, make_snapshot):
    enc = DeviceTransformerEncoder(d_model=16, num_heads=2, extra_numeric=[{"name": "fan", "path": "extra_numeric.fan"}])
    enc.save_pretrained(tmp_path / "enc")
    back = DeviceTransformerEncoder.from_pretrained(tmp_path / "enc")
    w = _win(make_snapshot, [40, 35])
    torch.testing.assert_close(enc.eval().encode([w]).features, back.eval().encode([w]).features)
    assert back.revision == enc.revision and back.config_dict() == enc.config_dict()
    assert DeviceTransformerEncoder(**enc.config_dict()).revision == enc.revision
    other = DeviceTransformerEncoder(d_model=16, num_heads=2)
    assert other.revision != enc.revision
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "enc" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="weights do not match|has shape"):
        DeviceTransformerEncoder.from_pretrained(tmp_path / "enc")


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="d_model"):
        DeviceTransformerEncoder(d_model=4)
    with pytest.raises(ConfigError, match="divisible"):
        DeviceTransformerEncoder(d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match="colour"):
        DeviceTransformerEncoder(colour="red")
    with pytest.raises(ConfigError, match="at least one of"):
        DeviceTransformerEncoder(layout="snapshots", summary_token=False, snapshot_tokens=False)
    with pytest.raises(ConfigError, match="layout"):
        DeviceTransformerEncoder(layout="pixels")
    with pytest.raises(ConfigError, match="unique"):
        DeviceTransformerEncoder(extra_numeric=[{"name": "battery_level", "path": "x"}])
    with pytest.raises(ConfigError, match="greater than min"):
        DeviceTransformerEncoder(extra_numeric=[{"name": "x", "path": "x", "min": 5, "max": 5}])
    enc = DeviceTransformerEncoder(d_model=16, num_heads=2)
    with pytest.raises(ShapeError, match="numeric must be"):
        enc(numeric=torch.zeros(1, 2, 3), present=torch.zeros(1, 2, 3), delta=torch.zeros(1, 2, 3),
            time=torch.zeros(1, 2, 3), categorical=torch.zeros(1, 2, 3, dtype=torch.long))


def test_registered_modality_encoder_and_decoder(fresh_registry, make_snapshot):
    reg = fresh_registry
    spec = reg.modality("device")
    assert spec.placeholder == "<device>" and spec.encoder == "device-transformer"
    assert ".jsonl" in spec.file_extensions
    enc = reg.create_encoder(spec.encoder, **spec.encoder_config)
    assert type(enc).trainable
    bridge = reg.create_bridge({**spec.bridge, "input_dim": enc.output_dim, "output_dim": 8})
    # one token per default feature (+ the window token) and 8 question-guided ones, as the bridge itself says
    assert enc.num_output_tokens() == 14 and bridge.num_output_tokens(enc.num_output_tokens()) == 22
    assert spec.content_hash(make_snapshot()) == spec.content_hash(make_snapshot(temperature="97.7F"))
    assert reg.create_decoder("device-command").input_kind == "text"
