"""Parsing Hugging Face multimodal chat messages: placeholders, media sources, mismatches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from xmm.errors import CorruptMediaError, MediaError, PromptError
from xmm.model.messages import MediaItem, parse_conversation


@pytest.fixture
def specs(registry):
    return {m: registry.modality(m) for m in ("image", "audio")}


def test_parts_become_placeholders_in_order(specs, media_dir: Path) -> None:
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image", "path": "red.png"}, {"type": "text", "text": " vs "},
                                     {"type": "audio", "path": "short.npy"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "image", "path": str(media_dir / "blue.png")}]},
    ]
    conv = parse_conversation(msgs, specs, base_dir=media_dir)
    assert [m["content"] for m in conv.messages] == ["be brief", "<image> vs <audio>", "ok", "and <image>"]
    assert [(it.modality, Path(it.source).name) for it in conv.media] == [("image", "red.png"), ("audio", "short.npy"),
                                                                        ("image", "blue.png")]
    # relative paths resolve against base_dir
    assert conv.media[0].source == media_dir / "red.png"


def test_bytes_and_objects(specs, media_dir: Path) -> None:
    raw = (media_dir / "red.png").read_bytes()
    obj = Image.new("RGB", (4, 4), (0, 255, 0))
    conv = parse_conversation([{"role": "user", "content": [{"type": "image", "bytes": raw}, {"type": "image", "image": obj},
                                                            {"type": "audio", "audio": np.ones(16, np.float32)}]}], specs)
    loaded = [it.load() for it in conv.media]
    assert loaded[0][0, 0].tolist() == [1.0, 0.0, 0.0]
    assert loaded[1][0, 0].tolist() == [0.0, 1.0, 0.0]
    assert loaded[2].shape == (16,)
    assert conv.media[0].content_hash() == MediaItem("image", raw, specs["image"]).content_hash()


def test_literal_placeholders_filled_from_media_in_order(specs, media_dir: Path) -> None:
    conv = parse_conversation("<audio> then <image> then <image>", specs, base_dir=media_dir,
                              media=[{"type": "image", "path": "red.png"}, {"type": "audio", "path": "long.npy"},
                                     {"type": "image", "path": "blue.png"}])
    assert conv.messages == [{"role": "user", "content": "<audio> then <image> then <image>"}]
    assert [Path(it.source).name for it in conv.media] == ["long.npy", "red.png", "blue.png"]


def test_placeholder_without_media(specs) -> None:
    with pytest.raises(PromptError, match=r"placeholder <image> has no image media"):
        parse_conversation([{"role": "user", "content": [{"type": "text", "text": "what is <image>?"}]}], specs)


def test_media_without_placeholder(specs, media_dir: Path) -> None:
    with pytest.raises(PromptError, match=r"1 media item\(s\) have no placeholder.*audio"):
        parse_conversation("<image> hi", specs, base_dir=media_dir,
                           media=[{"type": "image", "path": "red.png"}, {"type": "audio", "path": "short.npy"}])


def test_unknown_modality_and_empty_part(specs) -> None:
    with pytest.raises(PromptError, match=r"type 'video' is not a modality of this model"):
        parse_conversation([{"role": "user", "content": [{"type": "video", "path": "x.mp4"}]}], specs)
    with pytest.raises(PromptError, match=r"image part has no media"):
        parse_conversation([{"role": "user", "content": [{"type": "image"}]}], specs)
    with pytest.raises(PromptError, match=r"non-empty list"):
        parse_conversation([], specs)


def test_unreadable_inputs_name_the_file(specs, media_dir: Path) -> None:
    missing = MediaItem("image", media_dir / "nope.png", specs["image"])
    with pytest.raises(MediaError, match=r"image input '.*nope.png': file not found"):
        missing.load()
    broken = MediaItem("image", media_dir / "broken.png", specs["image"])
    with pytest.raises(CorruptMediaError, match=r"broken.png"):
        broken.load()
