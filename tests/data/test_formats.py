"""Record conversion rules, one by one: placeholders and media columns, LLaVA's leading media, alpaca, OpenAI parts,
plugin modalities' columns and parts, and the errors that name the field."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from xmm.data import DataError, RecordTooLargeError
from xmm.data.formats import Context, convert, detect_style, media_columns, plural
from xmm.data.paths import MediaRoot
from xmm.modality import ModalitySpec


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    (tmp_path / "a.png").write_bytes(b"A")
    (tmp_path / "b.png").write_bytes(b"B")
    specs = {name: ModalitySpec(name, load=lambda raw: raw, encoder="x", bridge={"type": "linear"})
             for name in ("image", "video", "audio", "device", "speech")}
    return Context(specs, MediaRoot(tmp_path))


def _flat(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, content with media as their placeholders and sources)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p["text"] if p["type"] == "text" else
                              f"<{p['type']}:{Path(p['path']).name if 'path' in p else p.get('bytes', p.get(p['type']))}>"
                              for p in content)
        out.append((m["role"], content))
    return out


def test_plural_and_columns(ctx: Context) -> None:
    assert [plural(n) for n in ("image", "speech", "box", "entity", "day")] == \
        ["images", "speeches", "boxes", "entities", "days"]
    assert media_columns(ctx.specs["device"]) == ("devices", "device")

    @dataclasses.dataclass(frozen=True)
    class Declared:
        name: str = "smell"
        data_columns: tuple[str, ...] = ("odours",)

    assert media_columns(Declared()) == ("odours", "smells", "smell")


def test_placeholders_fill_in_order_and_leading_media(ctx: Context) -> None:
    rec = {"images": ["a.png", "b.png"], "devices": [{"status": 1}],
           "conversations": [{"from": "human", "value": "<device> then <image>, <image>?"},
                             {"from": "gpt", "value": "ok"}]}
    assert _flat(convert(rec, "auto", ctx).messages) == [
        ("user", "<device:{'status': 1}> then <image:a.png>, <image:b.png>?"), ("assistant", "ok")]
    llava = {"image": "a.png", "conversations": [{"from": "system", "value": "Be brief."},
                                                 {"from": "human", "value": "What is it?"},
                                                 {"from": "gpt", "value": "a cat"}]}
    assert _flat(convert(llava, "llava", ctx).messages)[1] == ("user", "<image:a.png>What is it?")


@pytest.mark.parametrize("record, field, text", [
    ({"images": ["a.png"], "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}]},
     "conversations[0]", "placeholder <image> number 2 has no media: 'images' holds 1"),
    ({"images": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image>"},
                                                      {"from": "gpt", "value": "x"}]},
     "images", "2 image item(s) but 1 <image> placeholder(s)"),
    ({"conversations": [{"from": "robot", "value": "hi"}]}, "conversations[0].from", "role 'robot'"),
    ({"conversations": [{"from": "human", "value": ["a"]}]}, "conversations[0].value", "must be a string"),
    ({"image": "a.png", "conversations": [{"from": "gpt", "value": "x"}]}, "conversations", "no user turn"),
    ({"messages": [{"role": "user", "content": [{"type": "smell"}]}]}, "messages[0].content[0].type",
     "part type 'smell' is not one of"),
    ({"messages": "hello"}, "messages", "non-empty list"),
])
def test_errors_name_the_field(record: dict[str, Any], field: str, text: str, ctx: Context) -> None:
    with pytest.raises(DataError) as e:
        convert(record, "auto", ctx)
    assert e.value.field == field and text in str(e.value)


def test_alpaca_and_sharegpt_messages(ctx: Context) -> None:
    alpaca = {"instruction": "Describe", "input": "<image>", "output": "red", "system": "Short answers.",
              "history": [["hi", "hello"]], "images": ["a.png"]}
    assert _flat(convert(alpaca, "auto", ctx).messages) == [
        ("system", "Short answers."), ("user", "hi"), ("assistant", "hello"), ("user", "Describe\n<image:a.png>"),
        ("assistant", "red")]
    factory = {"messages": [{"role": "user", "content": "<video>Summarise"}, {"role": "assistant", "content": "a"}],
               "videos": ["b.png"], "system": "S"}
    assert detect_style(factory) == "sharegpt"
    assert _flat(convert(factory, "auto", ctx).messages)[:2] == [("system", "S"), ("user", "<video:b.png>Summarise")]


def test_openai_parts(ctx: Context, tmp_path: Path) -> None:
    png = base64.b64encode(b"PNG!").decode()
    rec = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}", "detail": "low"}},
        {"type": "image_url", "image_url": "a.png"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"}},
        {"type": "video", "video": {"url": "data:video/mp4,%00%01"}},
        {"type": "device_url", "device_url": {"url": "b.png"}},
        {"type": "device", "device": {"battery": 3}},
        {"type": "audio", "audio": [0.5, -0.5]},
        "plain text"]}, {"role": "assistant", "content": "ok"}]}
    parts = convert(rec, "auto", ctx).messages[0]["content"]
    assert convert(rec, "auto", ctx).style == "openai"
    assert parts[0] == {"type": "image", "bytes": b"PNG!"}
    assert parts[1] == {"type": "image", "path": str(tmp_path / "a.png")}
    assert parts[2] == {"type": "audio", "bytes": b"RIFF"}
    assert parts[3] == {"type": "video", "bytes": b"\x00\x01"}
    assert parts[4] == {"type": "device", "path": str(tmp_path / "b.png")}
    assert parts[5] == {"type": "device", "device": {"battery": 3}}
    assert np.array_equal(parts[6]["audio"], np.array([0.5, -0.5], dtype=np.float32))
    assert parts[7] == {"type": "text", "text": "plain text"}
    speech = dataclasses.replace(ctx, input_audio_modality="speech")
    assert convert(rec, "auto", speech).messages[0]["content"][2]["type"] == "speech"
    with pytest.raises(DataError, match="input_audio_modality"):
        convert(rec, "auto", dataclasses.replace(ctx, input_audio_modality="smell"))


def test_inline_limits_per_modality(ctx: Context) -> None:
    big = base64.b64encode(b"x" * 3000).decode()
    rec = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": f"data:image/png;base64,{big}"}}]}]}
    small = dataclasses.replace(ctx, limits=ctx.limits.model_copy(update={"max_inline_media_bytes": 1000}))
    with pytest.raises(RecordTooLargeError):
        convert(rec, "auto", small)
    assert convert(rec, "auto", ctx).messages[0]["content"][0]["bytes"] == b"x" * 3000


def test_hf_stored_media_and_extras(ctx: Context, tmp_path: Path) -> None:
    rec = {"id": 7, "meta": {"k": 1}, "other": "dropped",
           "images": [{"bytes": b"IMG", "path": "ignored.png"}, {"bytes": None, "path": "a.png"}],
           "messages": [{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "x"}]}
    out = convert(rec, "auto", ctx)
    assert out.messages[0]["content"] == [{"type": "image", "bytes": b"IMG"},
                                          {"type": "image", "path": str(tmp_path / "a.png")}]
    assert out.extra == {"id": 7, "meta": {"k": 1}}
    native = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "meta": 1,
              "source": "spoofed", "base_dir": "/"}
    assert convert(native, "xmm", ctx).extra == {"meta": 1}
