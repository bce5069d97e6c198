"""One set of examples written in every format xmm.data reads, each the way that format's own tools write it.

An example is a list of turns ``(role, pieces)``; a piece is ``("text", str)``, ``("image", k)``, ``("audio", k)``,
``("device", ("file", k))`` or ``("device", ("inline", {...}))``. Media are small files under ``media/``. The
writers below render the same examples as: xmm's JSONL, a LLaVA JSON array (media root ``media/``; a leading image
sometimes without its ``<image>``, as in LLaVA's own data), ShareGPT JSONL (``conversations`` or ``messages`` with
media columns), OpenAI chat JSONL (``data:`` URLs, local files, ``input_audio``, device parts), a ``datasets``
``save_to_disk`` folder, parquet shards and webdataset tar shards (images found by extension, audio by member name).
"""

from __future__ import annotations

import base64
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

SOURCES = {
    # name -> DataSource fields (paths relative to the corpus folder)
    "xmm": {"path": "xmm.jsonl", "format": "xmm"},
    "llava": {"path": "llava.json", "format": "llava", "media_root": "media"},
    "sharegpt": {"path": "sharegpt.jsonl", "format": "sharegpt"},
    "openai": {"path": "openai.jsonl", "format": "openai"},
    "hf-disk": {"path": "hf_disk", "format": "hf"},
    "hf-arrow": {"path": "hf_disk/data-00000-of-00001.arrow", "format": "hf"},
    "hf-parquet": {"path": "parquet", "format": "hf"},
    "webdataset": {"path": "wds/*.tar", "format": "auto"},
    "auto-llava": {"path": "llava.json", "media_root": "media"},
    "auto-openai": {"path": "openai.jsonl"},
}
PLACEHOLDER = {"image": "<image>", "audio": "<audio>", "device": "<device>"}
QUESTIONS = ["What colour is it?", "Describe it.", "Is the battery low?", "What do you hear?", "Compare them."]
ANSWERS = ["red", "a square", "yes", "no", "a tone at 440 Hz", "they differ"]


def _media(root: Path, rng: random.Random) -> dict[str, list[Any]]:
    from PIL import Image

    (root / "media" / "img").mkdir(parents=True)
    (root / "media" / "aud").mkdir()
    (root / "media" / "dev").mkdir()
    images = []
    for k in range(12):
        img = Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3)))
        img.putpixel((k % 8, k // 8), (255, 255, 255))
        img.save(root / "media" / "img" / f"{k}.png")
        images.append((root / "media" / "img" / f"{k}.png").read_bytes())
    audios = []
    for k in range(6):
        np.save(root / "media" / "aud" / f"{k}.npy", np.sin(np.arange(8 + 6 * k, dtype=np.float32) * (k + 1)))
        audios.append((root / "media" / "aud" / f"{k}.npy").read_bytes())
    devices = []
    for k in range(5):
        status = {"status": [float(k), 0.5 * k, 1.0, -float(k)]}
        (root / "media" / "dev" / f"{k}.json").write_text(json.dumps(status))
        devices.append(status)
    return {"image": images, "audio": audios, "device": devices}


def make_examples(n: int, seed: int) -> list[list[tuple[str, list[tuple[str, Any]]]]]:
    """``n`` examples mixing single and several images, audio, device telemetry (file or inline), several turns,
    system prompts and text-only turns."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 7
        turns: list[tuple[str, list[tuple[str, Any]]]] = []
        if kind == 5:
            turns.append(("system", [("text", "You answer briefly.")]))
        q = rng.choice(QUESTIONS)
        if kind == 0:
            user = [("image", rng.randrange(12)), ("text", "\n" + q)]
        elif kind == 1:
            user = [("text", "Compare "), ("image", rng.randrange(12)), ("text", " and "), ("image", rng.randrange(12)),
                    ("text", ".")]
        elif kind == 2:
            user = [("audio", rng.randrange(6)), ("text", " " + q)]
        elif kind == 3:
            dev = ("file", rng.randrange(5)) if i % 2 else ("inline", {"status": [rng.random() for _ in range(4)]})
            user = [("text", "Status: "), ("device", dev), ("text", " " + q)]
        elif kind == 4:
            user = [("image", rng.randrange(12)), ("device", ("file", rng.randrange(5))), ("text", q),
                    ("audio", rng.randrange(6))]
        elif kind == 5:
            user = [("text", q)]
        else:
            user = [("image", rng.randrange(12)), ("text", q)]
        turns += [("user", user), ("assistant", [("text", rng.choice(ANSWERS))])]
        if kind in (4, 6):
            turns += [("user", [("text", "And this one? "), ("image", rng.randrange(12))]),
                      ("assistant", [("text", rng.choice(ANSWERS))])]
        out.append(turns)
    return out


def _media_of(turns: list[tuple[str, list[tuple[str, Any]]]], modality: str) -> list[Any]:
    return [v for _, pieces in turns for kind, v in pieces if kind == modality]


def _placeholder_text(pieces: list[tuple[str, Any]]) -> str:
    return "".join(v if kind == "text" else PLACEHOLDER[kind] for kind, v in pieces)


def _image_prefix(turns: list[tuple[str, list[tuple[str, Any]]]]) -> bool:
    """All images of the example open its first user turn (so LLaVA may leave out their <image>)."""
    first = next(i for i, (role, _) in enumerate(turns) if role == "user")
    pieces = turns[first][1]
    n = len(_media_of(turns, "image"))
    return n > 0 and all(kind == "image" for kind, _ in pieces[:n])


def write_xmm(root: Path, examples: list[Any]) -> None:
    lines = []
    for turns in examples:
        msgs = []
        for role, pieces in turns:
            if role == "assistant" or role == "system":
                msgs.append({"role": role, "content": [{"type": "text", "text": pieces[0][1]}] if role == "assistant"
                             else pieces[0][1]})
                continue
            parts = []
            for kind, v in pieces:
                if kind == "text":
                    parts.append({"type": "text", "text": v})
                elif kind == "image":
                    parts.append({"type": "image", "path": f"media/img/{v}.png"})
                elif kind == "audio":
                    parts.append({"type": "audio", "path": f"media/aud/{v}.npy"})
                elif v[0] == "file":
                    parts.append({"type": "device", "path": f"media/dev/{v[1]}.json"})
                else:
                    parts.append({"type": "device", "device": v[1]})
            msgs.append({"role": role, "content": parts})
        lines.append(json.dumps({"messages": msgs, "meta": {"n": len(lines)}}))
    (root / "xmm.jsonl").write_text("\n".join(lines) + "\n")


def _device_value(v: Any, prefix: str) -> Any:
    return f"{prefix}dev/{v[1]}.json" if v[0] == "file" else v[1]


def write_llava(root: Path, examples: list[Any], rng: random.Random) -> None:
    records = []
    for i, turns in enumerate(examples):
        omit = _image_prefix(turns) and rng.random() < 0.5
        conv = []
        first_user = True
        for role, pieces in turns:
            text = _placeholder_text(pieces)
            if omit and role == "user" and first_user:
                text = text.replace("<image>", "", len(_media_of(turns, "image")))
            first_user = first_user and role != "user"
            conv.append({"from": {"user": "human", "assistant": "gpt", "system": "system"}[role], "value": text})
        rec: dict[str, Any] = {"id": f"ex{i}"}
        images = [f"img/{k}.png" for k in _media_of(turns, "image")]
        if len(images) == 1:
            rec["image"] = images[0]
        elif images:
            rec["image"] = images
        if _media_of(turns, "audio"):
            rec["audios"] = [f"aud/{k}.npy" for k in _media_of(turns, "audio")]
        if _media_of(turns, "device"):
            rec["devices"] = [_device_value(v, "") for v in _media_of(turns, "device")]
        rec["conversations"] = conv
        records.append(rec)
    (root / "llava.json").write_text(json.dumps(records, indent=2))


def write_sharegpt(root: Path, examples: list[Any]) -> None:
    lines = []
    for i, turns in enumerate(examples):
        rec: dict[str, Any] = {}
        body = [(role, _placeholder_text(pieces)) for role, pieces in turns]
        if i % 2:
            rec["conversations"] = [{"from": {"user": "human", "assistant": "gpt", "system": "system"}[r], "value": t}
                                    for r, t in body]
        else:
            if body[0][0] == "system":
                rec["system"] = body[0][1]
                body = body[1:]
            rec["messages"] = [{"role": r, "content": t} for r, t in body]
        for modality, column, fmt in (("image", "images", "media/img/{}.png"), ("audio", "audios", "media/aud/{}.npy")):
            if _media_of(turns, modality):
                rec[column] = [fmt.format(k) for k in _media_of(turns, modality)]
        if _media_of(turns, "device"):
            rec["devices"] = [_device_value(v, "media/") for v in _media_of(turns, "device")]
        lines.append(json.dumps(rec))
    (root / "sharegpt.jsonl").write_text("\n".join(lines) + "\n")


def write_openai(root: Path, examples: list[Any], media: dict[str, list[Any]]) -> None:
    lines = []
    for i, turns in enumerate(examples):
        msgs = []
        for role, pieces in turns:
            if role != "user":
                msgs.append({"role": role, "content": pieces[0][1]})
                continue
            parts: list[dict[str, Any]] = []
            for kind, v in pieces:
                if kind == "text":
                    parts.append({"type": "text", "text": v})
                elif kind == "image":
                    url = (f"data:image/png;base64,{base64.b64encode(media['image'][v]).decode()}" if i % 2 == 0
                           else f"media/img/{v}.png")
                    parts.append({"type": "image_url", "image_url": {"url": url, "detail": "auto"}})
                elif kind == "audio":
                    parts.append({"type": "input_audio", "input_audio": {
                        "data": base64.b64encode(media["audio"][v]).decode(), "format": "wav"}})
                elif v[0] == "file":
                    parts.append({"type": "device_url", "device_url": {"url": f"media/dev/{v[1]}.json"}})
                else:
                    parts.append({"type": "device", "device": v[1]})
            msgs.append({"role": role, "content": parts})
        lines.append(json.dumps({"messages": msgs}))
    (root / "openai.jsonl").write_text("\n".join(lines) + "\n")


def _hf_rows(examples: list[Any], media: dict[str, list[Any]]) -> list[dict[str, Any]]:
    rows = []
    for turns in examples:
        rows.append({
            "messages": [{"role": role, "content": _placeholder_text(pieces)} for role, pieces in turns],
            "images": [{"bytes": media["image"][k], "path": f"{k}.png"} for k in _media_of(turns, "image")],
            "audios": [{"bytes": media["audio"][k], "path": None} for k in _media_of(turns, "audio")],
            "devices": [media["device"][v[1]] if v[0] == "file" else v[1] for v in _media_of(turns, "device")],
        })
    return rows


def write_hf(root: Path, examples: list[Any], media: dict[str, list[Any]]) -> None:
    """With ``datasets`` itself: a save_to_disk folder and two parquet shards."""
    import datasets

    stored = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "images": datasets.List(datasets.Image()),
        "audios": datasets.List(stored),
        "devices": datasets.List({"status": datasets.List(datasets.Value("float64"))}),
    })
    # encoding an Audio value needs torchcodec; casting stored {bytes, path} to the Audio feature does not
    ds = datasets.Dataset.from_list(_hf_rows(examples, media), features=features)
    ds = ds.cast_column("audios", datasets.List(datasets.Audio()))
    assert isinstance(ds.features["audios"].feature, datasets.Audio)
    ds.save_to_disk(str(root / "hf_disk"))
    (root / "parquet").mkdir()
    half = len(ds) // 2
    ds.select(range(half)).to_parquet(str(root / "parquet" / "train-00000.parquet"))
    ds.select(range(half, len(ds))).to_parquet(str(root / "parquet" / "train-00001.parquet"))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_webdataset(root: Path, examples: list[Any], media: dict[str, list[Any]]) -> None:
    """Two shards; images are members found by extension, audio members are named in the record."""
    (root / "wds").mkdir()
    half = len(examples) // 2
    for shard, chunk in enumerate((examples[:half], examples[half:])):
        with tarfile.open(root / "wds" / f"shard-{shard:03d}.tar", "w") as tf:
            for j, turns in enumerate(chunk):
                key = f"{shard * half + j:06d}"
                rec: dict[str, Any] = {"conversations": [{"from": {"user": "human", "assistant": "gpt",
                                                                    "system": "system"}[r], "value": _placeholder_text(p)}
                                                         for r, p in turns]}
                audio = _media_of(turns, "audio")
                if audio:
                    rec["audios"] = [f"{key}.a{n}.npy" for n in range(len(audio))]
                if _media_of(turns, "device"):
                    rec["devices"] = [media["device"][v[1]] if v[0] == "file" else v[1]
                                      for v in _media_of(turns, "device")]
                _add(tf, f"{key}.json", json.dumps(rec).encode())
                for n, k in enumerate(_media_of(turns, "image")):
                    _add(tf, f"{key}.i{n}.png", media["image"][k])
                for n, k in enumerate(audio):
                    _add(tf, f"{key}.a{n}.npy", media["audio"][k])


def write_all(root: Path, n: int = 200, seed: int = 0) -> list[Any]:
    rng = random.Random(seed)
    media = _media(root, rng)
    examples = make_examples(n, seed)
    write_xmm(root, examples)
    write_llava(root, examples, rng)
    write_sharegpt(root, examples)
    write_openai(root, examples, media)
    write_hf(root, examples, media)
    write_webdataset(root, examples, media)
    return examples
