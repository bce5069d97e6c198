"""Manifests, bad-sample accounting, the deterministic batch order and the safe collator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xmm.errors import TrainingError
from xmm.training.data import (
    BadSamples,
    EpochBatchSampler,
    ManifestDataset,
    SafeCollator,
    SkippedBatch,
    read_manifest,
    record_skipped,
)


def test_manifest_skips_and_counts_bad_lines(tmp_path: Path, tiny_model, write_task) -> None:
    path = write_task(tmp_path, 5, bad_lines=True)
    with path.open("a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": [{"type": "smell", "path": "x"}]},
                                         {"role": "assistant", "content": "a"}]}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}], "meta": {"t": 1}}) + "\n")
        f.write("\n")
    bad = BadSamples("skip")
    examples = read_manifest(path, tiny_model.specs, bad)
    # 5 good + the corrupt-but-existing file (found only when decoded)
    assert len(examples) == 6
    assert bad.counts == {"invalid_json": 1, "unreadable_media": 1, "invalid_example": 2}
    assert any("train.jsonl:7" in m and "file not found" in m for m in bad.examples)
    assert any("'smell'" in m for m in bad.examples)
    assert examples[0].base_dir == path.parent.resolve()
    # the same lines met again (another stage, another epoch) are not counted twice
    read_manifest(path, tiny_model.specs, bad)
    assert bad.total == 4


def test_fail_policy_names_the_line(tmp_path: Path, tiny_model, write_task) -> None:
    path = write_task(tmp_path, 2, bad_lines=True)
    with pytest.raises(TrainingError, match=r"train.jsonl:3: .*on_bad_sample: fail"):
        read_manifest(path, tiny_model.specs, BadSamples("fail"))


def test_extra_keys_reach_the_collator(tmp_path: Path, tiny_model, write_task) -> None:
    path = write_task(tmp_path, 1)
    line = json.loads(path.read_text())
    line["meta"] = {"caption": "hi"}
    path.write_text(json.dumps(line) + "\n")
    ds = ManifestDataset.from_manifests([path], tiny_model.specs, BadSamples())
    assert ds[0]["meta"] == {"caption": "hi"} and ds[0]["source"].endswith("train.jsonl:1")


def test_safe_collator_drops_undecodable_media(tmp_path: Path, tiny_model, write_task) -> None:
    path = write_task(tmp_path, 3, bad_lines=True)
    bad = BadSamples()
    ds = ManifestDataset.from_manifests([path], tiny_model.specs, bad)
    safe = SafeCollator(tiny_model.collator(load_media=False))
    batch = safe([ds[i] for i in range(len(ds))])
    assert len(batch) == 3 and len(batch.media) == 3
    assert record_skipped(batch, bad) is batch
    assert bad.counts["unreadable_media"] == 2  # missing file (manifest) + corrupt file (collate)
    empty = safe([ds[len(ds) - 1]])  # nothing usable left
    assert isinstance(empty, SkippedBatch) and record_skipped(empty, bad) is None
    assert bad.counts["unreadable_media"] == 2  # the same sample again is not counted twice
    with pytest.raises(TrainingError, match="corrupt.vec.*on_bad_sample: fail"):
        SafeCollator(tiny_model.collator(load_media=False), "fail")([ds[len(ds) - 1]])


def test_merged_counts_each_sample_once() -> None:
    a, b = BadSamples(), BadSamples()
    a.record("unreadable_media", "x", key="m:1")
    b.record("unreadable_media", "x", key="m:1")
    b.record("invalid_json", "y", key="m:2")
    b.record("other", "z")
    merged = BadSamples.merged([a.state_dict(), b.state_dict()])
    assert merged["by_kind"] == {"unreadable_media": 1, "invalid_json": 1, "other": 1} and merged["total"] == 3


def test_batch_order_is_a_function_of_seed_and_epoch() -> None:
    s = EpochBatchSampler(10, 3, seed=5)
    e0 = list(s)
    assert len(e0) == 3 and all(len(b) == 3 for b in e0)  # drop_last
    s.set_position(0, 0)
    assert list(s) == e0
    s.set_position(1, 0)
    e1 = list(s)
    assert e1 != e0
    s.set_position(1, 2)
    assert list(s) == e1[2:]
    assert list(EpochBatchSampler(10, 3, seed=6)) != e0
    assert sorted(i for b in EpochBatchSampler(10, 4, seed=1, shuffle=False, drop_last=False) for i in b) == list(range(10))
