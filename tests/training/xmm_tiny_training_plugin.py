"""A tiny modality for the trainer's tests: ``vec`` = a text file of floats, encoded by a fixed random projection.

Importable by name (the tests put this folder on PYTHONPATH), so a plan's ``plugins: [xmm_tiny_training_plugin]``
registers it in every process torchrun starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import CorruptMediaError, MediaError
from xmm.modality import ModalitySpec

DIM_IN = 8
TOKENS = 4
DIM_OUT = 16


def load_vec(raw: Any) -> torch.Tensor:
    """A path or bytes holding DIM_IN whitespace-separated floats -> tensor [DIM_IN]."""
    try:
        text = Path(raw).read_text() if isinstance(raw, (str, Path)) else bytes(raw).decode()
        values = [float(x) for x in text.split()]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptMediaError(f"not a vector file: {e}", source=raw, modality="vec") from e
    if len(values) != DIM_IN:
        raise MediaError(f"expected {DIM_IN} numbers, got {len(values)}", source=raw, modality="vec")
    return torch.tensor(values)


class VecEncoder(Encoder):
    """[DIM_IN] -> features [TOKENS, DIM_OUT] through a fixed random map (its own seed: same weights every time)."""

    id = "tiny-vec"
    output_dim = DIM_OUT
    calls = 0  # items encoded, over all instances (tests count cache misses with it)

    def __init__(self, revision: str = "1", scale: float = 1.0) -> None:
        super().__init__()
        self.revision = revision
        self.scale = scale
        g = torch.Generator().manual_seed(1234)
        self.proj = torch.nn.Linear(DIM_IN, TOKENS * DIM_OUT)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(TOKENS * DIM_OUT, DIM_IN, generator=g) * 0.5)
            self.proj.bias.zero_()

    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        return {"x": raw.float() * self.scale}

    def num_output_tokens(self) -> int:
        return TOKENS

    def preprocess_config(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        VecEncoder.calls += x.shape[0]
        feats = torch.tanh(self.proj(x)).view(x.shape[0], TOKENS, DIM_OUT)
        return EncoderOutput(feats, torch.ones(x.shape[0], TOKENS, dtype=torch.bool))


class TrainableVecEncoder(VecEncoder):
    id = "tiny-vec-trainable"
    trainable = True


@hookimpl
def xmm_modalities() -> list[ModalitySpec]:
    return [ModalitySpec(name="vec", placeholder="<vec>", load=load_vec, encoder="tiny-vec",
                         bridge={"type": "mlp", "hidden_dim": 32},
                         file_extensions=(".vec",))]


@hookimpl
def xmm_encoders() -> dict[str, Any]:
    return {"tiny-vec": VecEncoder, "tiny-vec-trainable": TrainableVecEncoder}
