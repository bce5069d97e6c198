"""Tiny modalities for the server's tests, importable by name (a plan's ``plugins:`` registers it in a server
subprocess): ``image`` (PNG/JPEG through Pillow), ``audio`` (WAV through the standard library), ``device`` (a JSON
list of 4 numbers). Each encoder is a fixed random projection; the loaders raise xmm's media errors."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import CorruptMediaError, MediaError
from xmm.modality import ModalitySpec

DIM = 8


def _bytes(raw: Any) -> bytes:
    return Path(raw).read_bytes() if isinstance(raw, (str, Path)) else bytes(raw)


def load_image(raw: Any) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_bytes(raw))) as img:
            return np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise CorruptMediaError("not a readable image", source=raw, modality="image") from e


def load_audio(raw: Any) -> np.ndarray:
    try:
        with wave.open(io.BytesIO(_bytes(raw))) as w:
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise CorruptMediaError("not a WAV file", source=raw, modality="audio") from e
    samples = np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0
    if samples.size < DIM:
        raise MediaError(f"needs at least {DIM} samples", source=raw, modality="audio")
    return samples


def load_device(raw: Any) -> np.ndarray:
    try:
        value = json.loads(_bytes(raw))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptMediaError("not JSON", source=raw, modality="device") from e
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)):
        raise MediaError("device status must be a list of 4 numbers", source=raw, modality="device")
    return np.asarray(value, dtype=np.float32)


class TinyEncoder(Encoder):
    """Inputs flattened to ``tokens`` chunks of DIM values, through a fixed random projection."""

    revision = "1"
    output_dim = DIM

    def __init__(self, name: str = "tiny", tokens: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.id = f"test/serve-{name}"
        self.tokens = tokens
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(DIM, DIM)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(DIM, DIM, generator=g))
            self.proj.bias.zero_()

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        flat = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32).reshape(-1))
        flat = torch.nn.functional.pad(flat, (0, max(0, self.tokens * DIM - flat.numel())))
        return {"x": flat[: self.tokens * DIM].view(self.tokens, DIM)}

    def num_output_tokens(self) -> int:
        return self.tokens

    def forward(self, x: torch.Tensor, **_: Any) -> EncoderOutput:
        feats = self.proj(x)
        return EncoderOutput(feats, torch.ones(feats.shape[:2], dtype=torch.bool))


@hookimpl
def xmm_modalities() -> list[ModalitySpec]:
    return [
        ModalitySpec("image", load=load_image, encoder="serve-image", bridge={"type": "linear"},
                     file_extensions=(".png", ".jpg", ".jpeg")),
        ModalitySpec("audio", load=load_audio, encoder="serve-audio", bridge={"type": "linear"},
                     file_extensions=(".wav",)),
        ModalitySpec("device", load=load_device, encoder="serve-device", bridge={"type": "linear"},
                     file_extensions=(".json",)),
    ]


@hookimpl
def xmm_encoders() -> dict[str, Any]:
    return {
        "serve-image": lambda **kw: TinyEncoder("image", tokens=2, seed=1, **kw),
        "serve-audio": lambda **kw: TinyEncoder("audio", tokens=2, seed=2, **kw),
        "serve-device": lambda **kw: TinyEncoder("device", tokens=1, seed=3, **kw),
    }
