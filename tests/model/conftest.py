"""Fixtures for xmm.model tests: tiny in-process modalities (through the registry seam) and the tiny random LLM of
xmm.testing over SmolLM2's tokenizer."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError
from xmm.modality import ModalitySpec

IMG_DIM, AUD_DIM, AUD_FRAME = 6, 8, 8


def load_image(raw: Any) -> np.ndarray:
    """Tiny image loader: path/bytes/PIL image -> float array [H, W, 3] in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(raw, Image.Image):
            img = raw
        elif isinstance(raw, (bytes, bytearray)):
            img = Image.open(io.BytesIO(raw))
        else:
            img = Image.open(raw)
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise CorruptMediaError(f"not a readable image: {e}", source=raw, modality="image") from e
    return arr


def load_audio(raw: Any) -> np.ndarray:
    """Tiny audio loader: a .npy file/bytes or a 1-D array of samples."""
    try:
        if isinstance(raw, np.ndarray):
            arr = raw
        elif isinstance(raw, (bytes, bytearray)):
            arr = np.load(io.BytesIO(raw))
        else:
            arr = np.load(raw)
    except (ValueError, OSError) as e:
        raise CorruptMediaError(f"not a .npy array: {e}", source=raw if not isinstance(raw, np.ndarray) else None,
                                modality="audio") from e
    if arr.ndim != 1 or arr.size < AUD_FRAME:
        raise EmptyMediaError(f"needs >= {AUD_FRAME} samples in 1-D, got shape {arr.shape}", modality="audio")
    return arr.astype(np.float32)


class TinyImageEncoder(Encoder):
    """2x2 grid of mean colours -> 4 tokens, frozen random projection to IMG_DIM."""

    id = "test/tiny-image"
    revision = "1"
    output_dim = IMG_DIM

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(3, IMG_DIM)
        with torch.no_grad():
            # "pretrained" weights: deterministic, as a real frozen encoder's are
            self.proj.weight.copy_(torch.randn(IMG_DIM, 3, generator=g))
            self.proj.bias.copy_(torch.randn(IMG_DIM, generator=g))

    def num_output_tokens(self) -> int:
        return 4

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(raw).permute(2, 0, 1)[None]
        return {"grid": torch.nn.functional.adaptive_avg_pool2d(x, 2)[0].flatten(1).t()}  # [4, 3]

    def forward(self, grid: torch.Tensor, **_: Any) -> EncoderOutput:
        feats = self.proj(grid)
        return EncoderOutput(feats, torch.ones(feats.shape[:2], dtype=torch.bool))


class TinyAudioEncoder(Encoder):
    """Frames of AUD_FRAME samples -> one token each (variable T per clip)."""

    id = "test/tiny-audio"
    revision = "1"
    output_dim = AUD_DIM

    def __init__(self, frame: int = AUD_FRAME) -> None:
        super().__init__()
        self.frame = self.output_dim = frame

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        n = raw.size // self.frame
        return {"frames": torch.from_numpy(raw[: n * self.frame]).view(n, self.frame)}

    def preprocess_config(self) -> dict[str, Any]:
        return {"frame": self.frame}

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None, **_: Any) -> EncoderOutput:
        if lengths is None:
            lengths = torch.full((frames.shape[0],), frames.shape[1])
        mask = torch.arange(frames.shape[1])[None] < lengths[:, None]
        return EncoderOutput(frames, mask)


class TinyDeviceEncoder(Encoder):
    """A trainable encoder (like the device plugin's): a linear map over a 4-vector -> 2 tokens."""

    id = "test/tiny-device"
    revision = "1"
    output_dim = 5
    trainable = True

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 10)

    def num_output_tokens(self) -> int:
        return 2

    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        return {"x": torch.as_tensor(raw, dtype=torch.float32)}

    def forward(self, x: torch.Tensor, **_: Any) -> EncoderOutput:
        feats = self.lin(x).view(x.shape[0], 2, 5)
        return EncoderOutput(feats, torch.ones(feats.shape[:2], dtype=torch.bool))


def load_device(raw: Any) -> list[float]:
    if isinstance(raw, (list, tuple)) and len(raw) == 4:
        return [float(v) for v in raw]
    raise MediaError("device status must be 4 numbers", source=raw, modality="device")


class TinyPlugin:
    """An in-process plugin object, registered exactly like an installed one."""

    @hookimpl
    def xmm_modalities(self) -> list[ModalitySpec]:
        return [
            ModalitySpec("image", load=load_image, encoder="tiny-image", bridge={"type": "mlp"}, file_extensions=(".png",)),
            ModalitySpec("audio", load=load_audio, encoder="tiny-audio", bridge={"type": "linear"}, file_extensions=(".npy",)),
            ModalitySpec("device", load=load_device, encoder="tiny-device", bridge={"type": "linear"}),
        ]

    @hookimpl
    def xmm_encoders(self) -> dict[str, Any]:
        return {"tiny-image": TinyImageEncoder, "tiny-audio": TinyAudioEncoder, "tiny-device": TinyDeviceEncoder}


@pytest.fixture
def registry(make_registry: Any) -> Any:
    """A registry with only xmm-core and the tiny test plugin; it is the process-wide one during the test."""
    return make_registry(TinyPlugin(), name="tiny-test", distribution="xmm-plugin-tinytest", version="0.0.1")


@pytest.fixture(scope="session")
def tiny_llm_dir(make_tiny_llm: Any, smollm2_dir: Path) -> Path:
    """xmm.testing's tiny LLM with SmolLM2's tokenizer and chat template (the collator tests read that template);
    a large init gives varied greedy output, so comparisons of generated tokens mean something."""
    return make_tiny_llm(smollm2_dir, initializer_range=0.3)


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    """Two small PNGs, two .npy audio clips (16 and 40 samples), a corrupt PNG."""
    from PIL import Image

    d = tmp_path / "media"
    d.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "red.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "blue.png")
    np.save(d / "short.npy", np.linspace(-1, 1, 16, dtype=np.float32))
    np.save(d / "long.npy", np.sin(np.arange(40, dtype=np.float32)))
    (d / "broken.png").write_bytes(b"not a png at all")
    return d


@pytest.fixture
def tiny_config(tiny_llm_dir: Path, device: Any) -> Any:
    """Factory of MultimodalConfig dicts over the tiny LLM (image + audio unless overridden), on the test device."""

    def make(**overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"llm": str(tiny_llm_dir), "modalities": {"image": {}, "audio": {}}, "autocast": "off",
                               "device": str(device)}
        cfg.update(overrides)
        return cfg

    return make


@pytest.fixture
def tiny_model(registry: Any, tiny_llm: Any, tiny_config: Any) -> Any:
    """A MultimodalLM over the tiny LLM with the tiny image (mlp bridge) and audio (linear bridge) modalities."""
    from xmm.model import MultimodalLM

    torch.manual_seed(0)
    return MultimodalLM.from_config(tiny_config(), llm=tiny_llm, registry=registry)
