"""Fixtures for xmm.data: a tiny in-process plugin (image, audio, device), a tiny model over xmm.testing's tiny LLM,
and one corpus of examples written by :mod:`data_corpus` in every format xmm.data reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.modality import ModalitySpec
from xmm_data_loaders import load_audio, load_device, load_image


@pytest.fixture(autouse=True)
def _isolated_home(xmm_home: Path) -> Path:
    """Every test indexes into an empty $XMM_HOME."""
    return xmm_home


class GridEncoder(Encoder):
    """Mean colour of each 2x2 cell -> 4 tokens of 3 features."""

    id, revision, output_dim = "test/grid", "1", 3

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(raw).permute(2, 0, 1)[None]
        return {"grid": torch.nn.functional.adaptive_avg_pool2d(x, 2)[0].flatten(1).t()}

    def forward(self, grid: torch.Tensor, **_: Any) -> EncoderOutput:
        return EncoderOutput(grid, torch.ones(grid.shape[:2], dtype=torch.bool))


class FrameEncoder(Encoder):
    """4-sample frames -> one token each."""

    id, revision, output_dim = "test/frames", "1", 4

    def preprocess(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        n = raw.size // 4
        return {"frames": torch.from_numpy(raw[: n * 4]).view(n, 4)}

    def forward(self, frames: torch.Tensor, **_: Any) -> EncoderOutput:
        return EncoderOutput(frames, torch.ones(frames.shape[:2], dtype=torch.bool))


class StatusEncoder(Encoder):
    """4 numbers -> one token."""

    id, revision, output_dim = "test/status", "1", 4

    def preprocess(self, raw: list[float]) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor(raw, dtype=torch.float32)[None]}

    def forward(self, x: torch.Tensor, **_: Any) -> EncoderOutput:
        return EncoderOutput(x, torch.ones(x.shape[:2], dtype=torch.bool))


class DataTestPlugin:
    """image (.png), audio (.npy) and device (telemetry dicts; the plugin-modality case) modalities."""

    @hookimpl
    def xmm_modalities(self) -> list[ModalitySpec]:
        return [
            ModalitySpec("image", load=load_image, encoder="grid", bridge={"type": "linear"}, file_extensions=(".png",)),
            ModalitySpec("audio", load=load_audio, encoder="frames", bridge={"type": "linear"},
                         file_extensions=(".npy",)),
            ModalitySpec("device", load=load_device, encoder="status", bridge={"type": "linear"},
                         file_extensions=(".json",)),
        ]

    @hookimpl
    def xmm_encoders(self) -> dict[str, Any]:
        return {"grid": GridEncoder, "frames": FrameEncoder, "status": StatusEncoder}


@pytest.fixture
def registry(make_registry: Any) -> Any:
    return make_registry(DataTestPlugin(), name="data-test", distribution="xmm-plugin-datatest")


@pytest.fixture
def specs(registry: Any) -> dict[str, ModalitySpec]:
    return dict(registry.modalities)


@pytest.fixture
def tiny_model(registry: Any, tiny_llm: Any) -> Any:
    """A MultimodalLM over xmm.testing's tiny LLM with the three test modalities."""
    from xmm.model import MultimodalLM

    torch.manual_seed(0)
    cfg = {"llm": "tiny", "modalities": {"image": {}, "audio": {}, "device": {}}, "autocast": "off", "device": "cpu"}
    return MultimodalLM.from_config(cfg, llm=tiny_llm, registry=registry)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 examples written once per session in every format (see data_corpus.write_all)."""
    from data_corpus import write_all

    root = tmp_path_factory.mktemp("corpus")
    write_all(root, n=200, seed=0)
    return root
