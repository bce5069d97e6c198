"""The same 200 examples written in every format give the batches of the native manifest: token ids, attention,
labels and media (modality, placement, decoded content and feature-cache hash), through a tiny model's collator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_corpus import SOURCES
from xmm.data import BadExample, open_dataset

BATCH = 8


def _items(corpus_dir: Path, name: str, specs: Any) -> list[Any]:
    ds = open_dataset(SOURCES[name], specs, base_dir=corpus_dir)
    items = list(ds)
    bad = [it for it in items if isinstance(it, BadExample)]
    assert not bad, bad[:3]
    return items


def _batches(model: Any, items: list[Any]) -> list[Any]:
    collate = model.collator(padding_side="right", load_media=True)
    return [collate(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]


@pytest.fixture
def native(corpus_dir: Path, tiny_model: Any) -> list[Any]:
    return _batches(tiny_model, _items(corpus_dir, "xmm", tiny_model.specs))


def _same_media(a: Any, b: Any) -> None:
    assert (a.modality, a.batch_index, a.position, a.context) == (b.modality, b.batch_index, b.position, b.context)
    la, lb = a.loaded, b.loaded
    if isinstance(la, np.ndarray):
        assert la.dtype == lb.dtype and np.array_equal(la, lb)
    else:
        assert la == lb
    if a.modality != "device":  # telemetry given inline has no file bytes to hash
        assert a.content_hash() == b.content_hash()


@pytest.mark.parametrize("name", [n for n in SOURCES if n != "xmm"])
def test_same_batches_as_the_native_manifest(name: str, corpus_dir: Path, tiny_model: Any, native: list[Any]) -> None:
    items = _items(corpus_dir, name, tiny_model.specs)
    assert len(items) == 200
    batches = _batches(tiny_model, items)
    assert len(batches) == len(native)
    for got, want in zip(batches, native):
        assert got.input_ids.equal(want.input_ids)
        assert got.attention_mask.equal(want.attention_mask)
        assert got.labels.equal(want.labels)
        assert len(got.media) == len(want.media)
        for a, b in zip(got.media, want.media):
            _same_media(a, b)


def test_corpus_covers_every_modality_and_shape(corpus_dir: Path, specs: Any, native: list[Any]) -> None:
    """The comparison means something: the native batches hold every modality, several media per example, several
    turns and supervised answers."""
    media = [m for b in native for m in b.media]
    assert {m.modality for m in media} == {"image", "audio", "device"}
    assert max(sum(1 for m in b.media if m.batch_index == 0) for b in native) >= 3
    assert all(int((b.labels != -100).sum()) > 0 for b in native)


def test_auto_detects_each_style(corpus_dir: Path, specs: Any) -> None:
    styles = {}
    for name in ("xmm", "llava", "sharegpt", "openai", "hf-disk", "webdataset"):
        fields = {**SOURCES[name], "format": "auto"}
        ds = open_dataset(fields, specs, base_dir=corpus_dir)
        styles[name] = {ds.example(i).style for i in range(len(ds))}
    assert styles["xmm"] == {"xmm"}
    # a single `image` string is LLaVA's mark; a list of images or none reads the same as ShareGPT
    assert styles["llava"] == {"llava", "sharegpt"}
    assert styles["sharegpt"] == {"sharegpt"}
    # records without image_url / input_audio / *_url parts are plain HF chat parts, xmm's own format
    assert styles["openai"] == {"openai", "xmm"}
    assert styles["hf-disk"] == styles["webdataset"] == {"sharegpt"}


def test_where_names_each_record(corpus_dir: Path, specs: Any) -> None:
    where = {name: open_dataset(SOURCES[name], specs, base_dir=corpus_dir).where(7)
             for name in ("xmm", "llava", "hf-disk", "hf-parquet", "webdataset")}
    assert where["xmm"].endswith("xmm.jsonl:8")
    assert where["llava"].endswith("llava.json[7]")
    assert where["hf-disk"].endswith("hf_disk[row 7]")
    assert where["hf-parquet"].endswith("train-00000.parquet[row 7]")
    assert where["webdataset"].endswith("shard-000.tar[000007]")
