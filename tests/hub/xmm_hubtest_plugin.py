"""An in-process xmm plugin for the Hub tests (also imported by the offline-load subprocess): one modality, `smell`,
with a small frozen encoder that has weights, so the audit has frozen encoder tensors to compare against."""

from __future__ import annotations

from typing import Any

import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import MediaError
from xmm.modality import ModalitySpec

SMELL_DIM = 32


def load_smell(raw: Any) -> torch.Tensor:
    """A list of 3 * k numbers -> tensor [k, 3]."""
    t = torch.as_tensor(raw, dtype=torch.float32).reshape(-1)
    if t.numel() == 0 or t.numel() % 3:
        raise MediaError("a smell is a multiple of 3 numbers", source=None, modality="smell")
    return t.view(-1, 3)


class SmellEncoder(Encoder):
    """Frozen: each 3-number reading -> one token of SMELL_DIM features (fixed random projection)."""

    id = "test/smell-encoder"
    revision = "r1"
    output_dim = SMELL_DIM

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.proj = torch.nn.Linear(3, SMELL_DIM)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(SMELL_DIM, 3, generator=g))
            self.proj.bias.copy_(torch.randn(SMELL_DIM, generator=g))
        self.freeze()

    def preprocess(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": raw}

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        mask = torch.ones(x.shape[:2], dtype=torch.bool) if lengths is None else (
            torch.arange(x.shape[1])[None] < lengths[:, None])
        return EncoderOutput(self.proj(x), mask)


class HubTestPlugin:
    @hookimpl
    def xmm_modalities(self) -> list[ModalitySpec]:
        return [ModalitySpec("smell", "<smell>", load_smell, encoder="smell-encoder", bridge={"type": "mlp"})]

    @hookimpl
    def xmm_encoders(self) -> dict[str, Any]:
        return {"smell-encoder": SmellEncoder}


REGISTRATION = {"name": "hubtest", "distribution": "xmm-plugin-hubtest", "version": "0.0.1"}


def install(registry_module: Any) -> Any:
    """Make a registry with xmm-core and this plugin only the process-wide one (the offline-load subprocess)."""
    reg = registry_module.Registry(entry_points=False)
    info = reg.register(HubTestPlugin(), **REGISTRATION)
    assert info.error is None, info.error
    registry_module._REGISTRY = reg
    return reg


def word_tokenizer() -> Any:
    """A word-level tokenizer of 64 words (no downloads): the Hub tests' LLM has a 64-row embedding matrix."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>", "what", "does", "it", "smell", "like", "sweet", "sour", "?", "."]
    words += [f"w{i}" for i in range(51)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
