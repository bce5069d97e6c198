"""Indexes: records found by a byte scan (cached, memory-mapped), nothing parsed when a source opens, bad records
found when reached; a million-line manifest indexes correctly (its time and memory: benchmarks/data_index.py)."""

from __future__ import annotations

import io
import json
import pickle
import random
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xmm.data.limits as limits_mod
import xmm.data.scan as scan
from xmm.data import BadExample, SourceError, open_dataset
from xmm.data.scan import array_index, line_index
from xmm.errors import ConfigError, MissingDependencyError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}


def _text(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def test_line_index_edges(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\r\n\r\n\n  {"b": 2}\n{"c": "x\\ny"}')
    idx = line_index(p)
    data = p.read_bytes()
    assert idx[:, 2].tolist() == [1, 4, 5]
    assert [data[s:e] for s, e, _ in idx] == [b'\xef\xbb\xbf{"a": 1}', b'  {"b": 2}', b'{"c": "x\\ny"}']


def _nested(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 4 and r < 0.3:
        return [_nested(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 4 and r < 0.6:
        return {rng.choice(["a", 'b"', "c\\", "[d,", "}"]): _nested(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.choice(['x\\"y', "\\\\", "a,b]", '"', 1, None, "é\n", "\\", '\\\\\\\\\\"', "{[", 2.5])


@pytest.mark.parametrize("chunk", [23, 64, 4096])
def test_array_index_matches_json(chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Element boundaries of random JSON arrays (strings full of brackets, commas, quotes and backslashes), read in
    chunks that cut anywhere, give back exactly the elements json.loads sees."""
    monkeypatch.setattr(scan, "CHUNK", chunk)
    rng = random.Random(chunk)
    p = tmp_path / "a.json"
    for _ in range(60):
        items = [_nested(rng) for _ in range(rng.randint(0, 25))]
        p.write_text(json.dumps(items, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5))
        data = p.read_bytes()
        assert [json.loads(data[s:e]) for s, e in array_index(p)] == items


@pytest.mark.parametrize("text", ["[1,2", "[1]]", "[1] [2]", '["abc', "", '[1, "a\\"]'])
def test_array_index_refuses_what_is_not_one_array(text: str, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(text)
    with pytest.raises(SourceError):
        array_index(tmp_path / "a.json")


def test_open_parses_nothing_and_bad_records_are_found_when_reached(tmp_path: Path, specs: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [json.dumps(_text(i)) for i in range(1000)]
    lines[10] = "{broken"
    lines[500] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    parsed: list[int] = []
    real = limits_mod.loads
    monkeypatch.setattr("xmm.data.stores.loads", lambda data, limits: parsed.append(1) or real(data, limits))
    ds = open_dataset(tmp_path / "m.jsonl", specs)
    assert len(ds) == 1000 and not parsed
    broken, unanswered, last = ds[10], ds[500], ds[999]
    assert len(parsed) == 3  # only the records reached
    assert isinstance(broken, BadExample) and broken.kind == "invalid_json" and broken.key.endswith("m.jsonl:11")
    assert unanswered.kind == "invalid_example" and "no assistant answer" in unanswered.message
    assert last["messages"][1]["content"] == "a999"


def test_index_is_cached_and_follows_edits(tmp_path: Path, specs: Any, xmm_home: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(_text(i)) for i in range(5)))
    assert len(open_dataset(p, specs)) == 5
    cached = list((xmm_home / "data-index").glob("*.npy"))
    assert len(cached) == 1
    again = open_dataset(p, specs)
    assert len(again) == 5 and isinstance(again.store.index, np.memmap)
    with open(p, "a") as f:
        f.write("\n" + json.dumps(_text(5)))
    assert len(open_dataset(p, specs)) == 6
    assert len(list((xmm_home / "data-index").glob("*.npy"))) == 2


def test_unwritable_home_still_works(tmp_path: Path, specs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("XMM_HOME", str(blocker))
    (tmp_path / "m.jsonl").write_text(json.dumps(GOOD))
    ds = open_dataset(tmp_path / "m.jsonl", specs)
    assert len(ds) == 1 and not isinstance(ds[0], BadExample)


def test_datasets_pickle_for_loader_workers(corpus_dir: Path, specs: Any) -> None:
    from data_corpus import SOURCES

    for name in ("xmm", "llava", "hf-parquet", "hf-arrow", "webdataset"):
        ds = open_dataset(SOURCES[name], specs, base_dir=corpus_dir)
        first = ds[3]
        clone = pickle.loads(pickle.dumps(ds))
        assert repr(clone[3]) == repr(first)


def test_a_million_line_manifest(tmp_path: Path, specs: Any) -> None:
    n = 1_000_000
    template = '{"messages": [{"role": "user", "content": "question %d"}, {"role": "assistant", "content": "a"}]}\n'
    broken = 777_777
    p = tmp_path / "big.jsonl"
    with open(p, "w") as f:
        for start in range(0, n, 100_000):
            f.write("".join(template % i if i != broken else "{broken\n" for i in range(start, start + 100_000)))
    ds = open_dataset(p, specs)
    assert len(ds) == n
    assert ds[0]["messages"][0]["content"] == "question 0"
    assert ds[n - 1]["messages"][0]["content"] == f"question {n - 1}"
    assert [i for i in range(broken - 50, broken + 50) if isinstance(ds[i], BadExample)] == [broken]
    assert ds[broken].key == f"{p}:{broken + 1}" and ds[broken].kind == "invalid_json"
    assert ds[broken + 1]["messages"][0]["content"] == f"question {broken + 1}"


def test_large_llava_array(tmp_path: Path, specs: Any) -> None:
    n = 200_000
    rec = '{"id": "%d", "conversations": [{"from": "human", "value": "q, [%d]"}, {"from": "gpt", "value": "a"}]}'
    (tmp_path / "llava.json").write_text("[\n" + ",\n".join(rec % (i, i) for i in range(n)) + "\n]")
    ds = open_dataset(tmp_path / "llava.json", specs, format="llava")
    assert len(ds) == n
    assert ds[123_456]["messages"][0]["content"] == "q, [123456]" and ds[123_456]["id"] == "123456"


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_samples(tmp_path: Path, specs: Any) -> None:
    rec = {"conversations": [{"from": "human", "value": "<device> ok?"}, {"from": "gpt", "value": "yes"}]}
    _tar(tmp_path / "s.tar", [("a/001.json", json.dumps(rec).encode()),
                              ("a/001.status.json", b'{"status": [1, 2, 3, 4]}'),
                              ("a/002.png", b"png-without-json"),
                              ("a/003.json", b"{broken")])
    ds = open_dataset(tmp_path / "s.tar", specs)
    assert len(ds) == 3
    first = ds[0]
    assert first["messages"][0]["content"][0] == {"type": "device", "bytes": b'{"status": [1, 2, 3, 4]}'}
    assert ds[1].kind == "invalid_example" and "no .json" in ds[1].message and ds[1].key.endswith("s.tar[a/002]")
    assert ds[2].kind == "invalid_json"


def test_compressed_tar_is_refused(tmp_path: Path, specs: Any) -> None:
    with tarfile.open(tmp_path / "s.tar", "w:gz") as tf:
        info = tarfile.TarInfo("x.json")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(SourceError, match="decompress"):
        len(open_dataset(tmp_path / "s.tar", specs))


@pytest.mark.parametrize("case", ["missing", "not-json", "hf-on-jsonl", "glob", "bad-field"])
def test_source_errors(case: str, tmp_path: Path, specs: Any) -> None:
    (tmp_path / "m.jsonl").write_text(json.dumps(GOOD))
    (tmp_path / "m.txt").write_text("hello")
    fields = {"missing": {"path": str(tmp_path / "nope.jsonl")},
              "not-json": {"path": str(tmp_path / "m.txt")},
              "hf-on-jsonl": {"path": str(tmp_path / "m.jsonl"), "format": "hf"},
              "glob": {"path": str(tmp_path / "*.parquet")},
              "bad-field": {"path": str(tmp_path / "m.jsonl"), "fromat": "llava"}}[case]
    error = ConfigError if case == "bad-field" else SourceError
    with pytest.raises(error) as e:
        len(open_dataset(fields, specs))
    assert ("fromat" if case == "bad-field" else str(tmp_path)) in str(e.value)


def test_dataset_dict_split(tmp_path: Path, specs: Any) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"conversations": [[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]] * 3}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                               "test": datasets.Dataset.from_dict({"conversations": rows["conversations"][:1]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(open_dataset(tmp_path / "dd", specs)) == 3
    assert len(open_dataset(tmp_path / "dd", specs, split="test")) == 1
    with pytest.raises(SourceError, match="splits"):
        open_dataset(tmp_path / "dd", specs, split="validation")


def test_missing_extra_is_named(tmp_path: Path, specs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r"xmm-core\[data\]"):
        open_dataset(tmp_path / "t.parquet", specs)
