"""Media paths stay inside the dataset's folder (or media root) and limits hold before any work: refused records are
counted bad samples, never read, never quoted; typed errors name file, line and field."""

from __future__ import annotations

import base64
import builtins
import json
import os
from pathlib import Path
from typing import Any

import pytest
from xmm.data import (
    BadExample,
    DataLimits,
    InvalidJSONError,
    MediaFileError,
    NestingTooDeepError,
    RecordTooLargeError,
    UnsafePathError,
    open_dataset,
)

SECRET = "TOP-SECRET-CONTENT-1234"


def _record(image: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "?"}]},
                         {"role": "assistant", "content": "ok"}]}


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """data/ (the dataset, with img/ok.png) beside outside/ (a secret, a real PNG and a FIFO)."""
    from PIL import Image

    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "img").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(data / "img" / "ok.png")
    Image.new("RGB", (4, 4), (9, 9, 9)).save(outside / "real.png")
    (outside / "secret.png").write_text(SECRET)
    os.mkfifo(outside / "pipe.png")
    os.mkfifo(data / "img" / "pipe.png")
    (data / "img" / "link.png").symlink_to(outside / "real.png")
    (data / "img" / "inner.png").symlink_to(data / "img" / "ok.png")
    (data / "img" / "folder.png").mkdir()
    return {"data": data, "outside": outside}


REFUSED = {
    "dotdot": ("../outside/real.png", "unsafe_path"),
    "dotdot-deep": ("img/../../outside/secret.png", "unsafe_path"),
    "absolute": ("{outside}/real.png", "unsafe_path"),
    "file-url": ("file://{outside}/real.png", "unsafe_path"),
    "http-url": ("http://example.com/a.png", "unsafe_path"),
    "home": ("~/a.png", "unsafe_path"),
    "symlink-out": ("img/link.png", "unsafe_path"),
    "fifo-outside": ("{outside}/pipe.png", "unsafe_path"),
    "fifo-inside": ("img/pipe.png", "unreadable_media"),
    "directory": ("img/folder.png", "unreadable_media"),
    "missing": ("img/nope.png", "unreadable_media"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_paths_are_counted_never_read(case: str, tree: dict[str, Path], specs: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    value, kind = REFUSED[case]
    value = value.format(outside=tree["outside"])
    (tree["data"] / "train.jsonl").write_text(json.dumps(_record(value)) + "\n" + json.dumps(_record("img/ok.png")))
    opened: list[str] = []

    def spy(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, os.PathLike)):
                opened.append(os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", spy(os.open))
    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    ds = open_dataset(tree["data"] / "train.jsonl", specs)
    bad = ds[0]
    assert isinstance(bad, BadExample) and bad.kind == kind, bad
    assert bad.key.endswith("train.jsonl:1")
    assert "messages[0].content[0].path" in bad.message
    assert SECRET not in bad.message
    assert not any("outside" in p or "pipe" in p or "folder" in p for p in opened), opened
    good = ds[1]
    assert not isinstance(good, BadExample)
    from xmm.model.messages import parse_conversation

    parse_conversation(good["messages"], specs).media[0].load()
    assert any(p.endswith("ok.png") for p in opened)  # the spy sees what is opened


def test_typed_error_names_file_line_and_field(tree: dict[str, Path], specs: Any) -> None:
    (tree["data"] / "train.jsonl").write_text("\n\n" + json.dumps(_record("../outside/secret.png")) + "\n")
    ds = open_dataset(tree["data"] / "train.jsonl", specs)
    with pytest.raises(UnsafePathError) as e:
        ds.example(0)
    assert e.value.source.endswith("train.jsonl:3") and e.value.field == "messages[0].content[0].path"
    assert "train.jsonl:3" in str(e.value) and SECRET not in str(e.value)


def test_symlink_inside_the_root_and_opt_in(tree: dict[str, Path], specs: Any) -> None:
    lines = [_record("img/inner.png"), _record("../outside/real.png"), _record(f"file://{tree['outside']}/real.png")]
    (tree["data"] / "train.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    ds = open_dataset(tree["data"] / "train.jsonl", specs)
    assert [isinstance(x, BadExample) for x in ds] == [False, True, True]
    ds = open_dataset(tree["data"] / "train.jsonl", specs, allow_outside_paths=True)
    items = list(ds)
    assert not any(isinstance(x, BadExample) for x in items)
    assert items[1]["messages"][0]["content"][0]["path"] == str(tree["outside"] / "real.png")


def test_media_root_confines_llava_images(tree: dict[str, Path], specs: Any) -> None:
    rec = {"image": "ok.png", "conversations": [{"from": "human", "value": "<image>\n?"}, {"from": "gpt", "value": "x"}]}
    escape = {**rec, "image": "../../outside/real.png"}
    (tree["data"] / "llava.json").write_text(json.dumps([rec, escape]))
    ds = open_dataset(tree["data"] / "llava.json", specs, media_root="img", base_dir=tree["data"])
    assert ds.media_root == tree["data"] / "img"
    assert not isinstance(ds[0], BadExample)
    assert ds[1].kind == "unsafe_path" and "field 'image'" in ds[1].message


def test_limits_hold_before_parsing(tmp_path: Path, specs: Any) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})
    lines = [
        "[" * 200_000,                                  # would be a RecursionError in json.loads
        good.replace("hi", "x" * 300_000),              # over max_record_bytes: never read
        "{not json",
        good.replace("hi", "y" * 1500),                 # fits the line, over max_text_chars=1000
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(b"x" * 900).decode()}}]}]}),
        good,
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    limits = DataLimits(max_record_bytes=250_000, max_json_depth=32, max_text_chars=1000, max_inline_media_bytes=500)
    ds = open_dataset({"path": str(tmp_path / "m.jsonl"), "limits": limits.model_dump()}, specs)
    kinds = [x.kind if isinstance(x, BadExample) else "ok" for x in ds]
    assert kinds == ["too_deep", "too_large", "invalid_json", "too_large", "too_large", "ok"]
    errors = []
    for i in range(5):
        with pytest.raises((NestingTooDeepError, RecordTooLargeError, InvalidJSONError)) as e:
            ds.example(i)
        errors.append(e.value)
    assert errors[0].source.endswith("m.jsonl:1") and "200000 levels" in str(errors[0])
    assert errors[4].field == "messages[0].content[0].image_url.url"


def test_default_limits_refuse_a_deep_line_without_crashing(tmp_path: Path, specs: Any) -> None:
    (tmp_path / "m.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    assert open_dataset(tmp_path / "m.jsonl", specs)[0].kind == "too_deep"


def test_too_many_media_and_bad_base64(tmp_path: Path, specs: Any) -> None:
    many = {"messages": [{"role": "user", "content": [{"type": "device", "device": {"status": [1, 2, 3, 4]}}] * 5},
                         {"role": "assistant", "content": "ok"}]}
    audio = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "@@@",
                                                                                             "format": "wav"}}]},
                          {"role": "assistant", "content": "ok"}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(many) + "\n" + json.dumps(audio))
    ds = open_dataset({"path": str(tmp_path / "m.jsonl"), "limits": {"max_media_items": 4}}, specs)
    assert ds[0].kind == "too_large" and "max_media_items=4" in ds[0].message
    assert ds[1].kind == "invalid_example" and "input_audio.data" in ds[1].message


def test_media_errors_name_the_file_not_its_content(tree: dict[str, Path], specs: Any) -> None:
    """A file inside the root that is not an image: the loader's error names it; its bytes are never echoed."""
    from xmm.data.check import check_dataset

    (tree["data"] / "img" / "text.png").write_text(SECRET)
    (tree["data"] / "train.jsonl").write_text(json.dumps(_record("img/text.png")))
    report = check_dataset(open_dataset(tree["data"] / "train.jsonl", specs))
    assert report.by_kind == {"unreadable_media": 1}
    assert SECRET not in json.dumps(report.as_dict())
    assert not isinstance(MediaFileError("x"), UnsafePathError)
