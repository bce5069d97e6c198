"""Helpers of the server's tests (a uniquely named module, imported by name: no `from conftest import`): the tiny
model over xmm.testing's tiny LLM and ``xmm_serve_test_plugin``'s modalities, media makers, raw HTTP posts."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
import wave
from pathlib import Path
from typing import Any

import numpy as np
import xmm_serve_test_plugin as plugin

HERE = Path(__file__).parent
KEY = "test-key-123"

def tiny_registry() -> Any:
    from xmm.registry import Registry

    reg = Registry(entry_points=False)
    info = reg.register(plugin, name="xmm_serve_test_plugin", distribution="xmm_serve_test_plugin", version="0")
    assert info.error is None, info.error
    return reg


def build_model(llm_dir: Path, **config: Any) -> Any:
    import torch
    from xmm.model import MultimodalLM

    torch.manual_seed(0)
    cfg = {"llm": str(llm_dir), "modalities": {"image": {}, "audio": {}, "device": {}}, "autocast": "off",
           "max_length": 256, **config}
    return MultimodalLM.from_config(cfg, registry=tiny_registry())


# -- media ---------------------------------------------------------------------------------------------------------
def png_bytes(colour: tuple[int, int, int] = (255, 0, 0), size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(n: int = 400, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(n) / 5.0) * 8000).astype(np.int16).tobytes())
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(text: str = "What colour is it?", colour: tuple[int, int, int] = (255, 0, 0)) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(colour), "image/png")}},
        {"type": "text", "text": text},
    ]}]


# -- raw HTTP (for what the openai client would not send) ------------------------------------------------------------
def post_raw(url: str, body: bytes, *, key: str | None = KEY, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST ``body`` as it is; returns (status, decoded JSON or text)."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text
