"""``xmm data check`` finds every bad sample ahead of time; ``xmm data convert`` writes a native manifest that
trains exactly like its source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from data_corpus import SOURCES
from typer.testing import CliRunner
from xmm.cli.main import app
from xmm.data import BadExample, open_dataset


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_check_reports_counts_modalities_and_tokens(corpus_dir: Path, registry: Any, tiny_llm_dir: Path) -> None:
    res = _run("data", "check", str(corpus_dir / "llava.json"), "--format", "llava", "--media-root",
               str(corpus_dir / "media"), "--llm", str(tiny_llm_dir), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["records"] == report["usable"] == 200 and report["bad"]["total"] == 0
    assert set(report["media_items"]) == {"image", "audio", "device"}
    assert report["examples_with"]["audio"] <= report["media_items"]["audio"]
    lengths = report["token_lengths"]
    assert 0 < lengths["min"] <= lengths["p50"] <= lengths["p95"] <= lengths["max"]
    assert report["answer_tokens"]["min"] >= 1
    text = _run("data", "check", str(corpus_dir / "sharegpt.jsonl"), "--no-tokens")
    assert text.exit_code == 0 and "records: 200   usable: 200   bad: 0" in text.output


def test_check_lists_every_bad_sample(tmp_path: Path, registry: Any) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"not a png")
    good = {"messages": [{"role": "user", "content": [{"type": "image", "path": "img/ok.png"}, "?"]},
                         {"role": "assistant", "content": "fine"}]}

    def with_image(path: str) -> str:
        return json.dumps({**good, "messages": [{"role": "user", "content": [{"type": "image", "path": path}]},
                                                good["messages"][1]]})

    planted = {
        2: ("invalid_json", "{oops"),
        3: ("unsafe_path", with_image("../../etc/passwd")),
        5: ("unreadable_media", with_image("img/missing.png")),
        6: ("unreadable_media", with_image("img/corrupt.png")),
        7: ("too_deep", "[" * 5000 + "]" * 5000),
        8: ("invalid_example", json.dumps({"messages": [{"role": "user", "content": "no answer"}]})),
        9: ("invalid_example", json.dumps({"messages": [{"role": "user", "content": [{"type": "smell", "x": 1}]},
                                                        {"role": "assistant", "content": "?"}]})),
    }
    lines = [planted[n][1] if n in planted else json.dumps(good) for n in range(1, 11)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    res = _run("data", "check", str(tmp_path / "m.jsonl"), "--no-tokens", "--json")
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["records"] == 10 and report["usable"] == 3
    found = {int(b["where"].rsplit(":", 1)[1]): b["kind"] for b in report["bad"]["samples"]}
    assert found == {n: kind for n, (kind, _) in planted.items()}
    fast = json.loads(_run("data", "check", str(tmp_path / "m.jsonl"), "--no-tokens", "--no-decode", "--json").output)
    assert fast["bad"]["total"] == len(planted) - 1  # the corrupt PNG is found only by decoding
    human = _run("data", "check", str(tmp_path / "m.jsonl"), "--no-tokens")
    assert human.exit_code == 1 and human.output.count("BAD ") == len(planted)


def _flat(item: Any, specs: Any) -> tuple[Any, ...]:
    from xmm.model.messages import parse_conversation

    conv = parse_conversation(item["messages"], specs)
    return (tuple((m["role"], m["content"]) for m in conv.messages),
            tuple((it.modality, repr(it.load())) for it in conv.media))


@pytest.mark.parametrize("name", ["openai", "hf-parquet", "webdataset"])
def test_convert_round_trip(name: str, corpus_dir: Path, tmp_path: Path, registry: Any, specs: Any) -> None:
    """Inline media (data URLs, base64 audio, parquet bytes, tar members) land in OUT.media/; the converted manifest
    gives the same conversations and media as the native one."""
    src = {**SOURCES[name], "path": str(corpus_dir / SOURCES[name]["path"])}
    out = tmp_path / "out" / "train.jsonl"
    res = _run("data", "convert", src["path"], str(out), "--format", src["format"], "--copy-media", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["written"] == 200 and report["bad"]["total"] == 0 and report["outside_paths"] == 0
    assert report["media_files_written"] > 0 and (out.parent / "train.jsonl.media").is_dir()
    converted = list(open_dataset(out, specs, format="xmm"))
    native = list(open_dataset(SOURCES["xmm"], specs, base_dir=corpus_dir))
    assert not any(isinstance(x, BadExample) for x in converted)
    assert [_flat(a, specs) for a in converted] == [_flat(b, specs) for b in native]


def test_convert_names_the_media_root_to_train_with(corpus_dir: Path, tmp_path: Path, registry: Any,
                                                    specs: Any) -> None:
    out = tmp_path / "elsewhere" / "train.jsonl"
    res = _run("data", "convert", str(corpus_dir / "llava.json"), str(out), "--media-root", str(corpus_dir / "media"))
    assert res.exit_code == 0, res.output
    assert f"media_root: {corpus_dir / 'media'}" in res.output
    refused = [x for x in open_dataset(out, specs) if isinstance(x, BadExample)]
    assert refused and {x.kind for x in refused} == {"unsafe_path"}  # absolute paths outside out/'s folder
    usable = list(open_dataset(out, specs, media_root=str(corpus_dir / "media")))
    assert not any(isinstance(x, BadExample) for x in usable) and len(usable) == 200


def test_column_option(corpus_dir: Path, tmp_path: Path, registry: Any) -> None:
    from xmm.errors import ConfigError

    res = _run("data", "check", str(corpus_dir / "sharegpt.jsonl"), "--column", "images")
    assert isinstance(res.exception, ConfigError) and "--column" in str(res.exception)
    renamed = [json.loads(line) for line in (corpus_dir / "sharegpt.jsonl").read_text().splitlines()]
    for rec in renamed:
        if "images" in rec:
            rec["pics"] = rec.pop("images")
    (tmp_path / "renamed.jsonl").write_text("\n".join(json.dumps(r) for r in renamed))
    args = ("data", "check", str(tmp_path / "renamed.jsonl"), "--media-root", str(corpus_dir), "--no-tokens", "--json")
    unmapped = json.loads(_run(*args).output)
    assert unmapped["bad"]["by_kind"] == {"invalid_example": sum("pics" in r for r in renamed)}  # <image> unfilled
    res = _run(*args, "--column", "images=pics")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["usable"] == 200
