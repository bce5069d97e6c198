"""Decoder outputs as JSON content parts: media as data: URLs, results (device commands) as JSON."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from xmm.serve.outputs import jsonable, output_parts


class Command(BaseModel):
    name: str
    args: dict[str, Any]


@dataclasses.dataclass
class CommandResult:
    text: str
    command: Command | None
    error: Exception | None


@dataclasses.dataclass
class Produced:
    """Shaped like xmm.model.outputs.ProducedOutput (value, save)."""

    modality: str
    value: Any
    kind: str = "media"

    def save(self, stem: str | Path) -> Path:
        if self.kind == "result":
            raise NotImplementedError
        from PIL import Image

        path = Path(f"{stem}.png")
        Image.new("RGB", (4, 4), self.value).save(path)
        return path


def test_media_become_data_urls_and_results_json():
    result = CommandResult("set_brightness(level=3)", Command(name="set_brightness", args={"level": 3}), None)
    bad = CommandResult("nonsense", None, ValueError("unknown command 'nonsense'"))
    parts = output_parts({"image": [Produced("image", (255, 0, 0))],
                          "device": [Produced("device", result, kind="result"), Produced("device", bad, "result")]})
    image, ok, err = parts
    assert image["type"] == "image_url" and image["modality"] == "image"
    header, payload = image["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64" and base64.b64decode(payload).startswith(b"\x89PNG")
    assert ok == {"type": "device", "modality": "device", "device": {
        "text": "set_brightness(level=3)", "command": {"name": "set_brightness", "args": {"level": 3}}, "error": None}}
    assert err["device"]["error"] == "unknown command 'nonsense'" and err["device"]["command"] is None
    assert output_parts({}) == [] and output_parts(None) == []


def test_describe_wins_and_anything_is_jsonable():
    class Described:
        modality, kind = "device", "result"

        def describe(self) -> dict[str, Any]:
            return {"command": "reboot", "at": Path("/x")}

    assert output_parts({"device": [Described()]})[0]["device"] == {"command": "reboot", "at": "/x"}
    deep: Any = []
    cur = deep
    for _ in range(50):
        cur.append([])
        cur = cur[0]
    assert isinstance(jsonable(deep), list)  # cut off as text past the depth limit, never a RecursionError
    assert jsonable({1: {2, 3}, "f": 1.5, "o": object()})["f"] == 1.5
