"""NExT-GPT's ``transformer`` output projector (as in GILL's mapper): an encoder over the signal-token states and a
decoder whose T learned queries cross-attend to them, giving exactly the decoder's conditioning shape ``[T, D]``."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xmm.errors import ShapeError
from xmm.projectors._registry import register_projector
from xmm.projectors.base import Projector, ProjectorConfig


class TransformerProjectorConfig(ProjectorConfig):
    type: Literal["transformer"] = "transformer"
    hidden_dim: int = Field(default=512, gt=0, description="width of the encoder-decoder")
    num_heads: int = Field(default=4, gt=0)
    num_encoder_layers: int = Field(default=4, ge=0)
    num_decoder_layers: int = Field(default=4, ge=1)
    ffn_dim: int | None = Field(default=None, gt=0, description="feed-forward width; default 4 x hidden_dim")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_input_tokens: int = Field(default=64, gt=0, description="how many signal-token positions get an embedding")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerProjectorConfig:
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.num_input_tokens is not None and self.num_input_tokens > self.max_input_tokens:
            raise ValueError(f"num_input_tokens ({self.num_input_tokens}) exceeds max_input_tokens ({self.max_input_tokens})")
        return self


@register_projector("transformer")
class TransformerProjector(Projector):
    """``[B, S, d_llm]`` -> Linear to width W (+ learned position per signal token) -> transformer encoder ->
    decoder with T learned queries (self-attention, cross-attention to the encoded signal tokens) -> Linear to D
    -> ``[B, T, D]``. Pre-norm layers with a final LayerNorm on each stack."""

    config_class = TransformerProjectorConfig

    def __init__(self, config: TransformerProjectorConfig) -> None:
        super().__init__(config)
        w = config.hidden_dim
        t, d = config.output_shape
        ffn = config.ffn_dim or 4 * w
        self.in_proj = nn.Linear(config.input_dim, w)
        self.positions = nn.Parameter(torch.zeros(config.max_input_tokens, w))
        if config.num_encoder_layers:
            enc_layer = nn.TransformerEncoderLayer(w, config.num_heads, ffn, config.dropout, activation="gelu", batch_first=True, norm_first=True)
            self.encoder: nn.TransformerEncoder | None = nn.TransformerEncoder(
                enc_layer, config.num_encoder_layers, norm=nn.LayerNorm(w), enable_nested_tensor=False
            )
        else:
            self.encoder = None
        dec_layer = nn.TransformerDecoderLayer(w, config.num_heads, ffn, config.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, config.num_decoder_layers, norm=nn.LayerNorm(w))
        self.queries = nn.Parameter(torch.randn(t, w) * 0.02)
        self.out_proj = nn.Linear(w, d)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.check_input(hidden, mask)
        s = hidden.shape[1]
        if s > self.config.max_input_tokens:
            raise ShapeError(f"transformer projector takes at most {self.config.max_input_tokens} signal tokens, got {s}")
        # an item without any real signal token would make attention softmax over nothing (NaN); let it attend to
        # its (meaningless) positions instead - its output is never used
        empty = ~mask.any(dim=1, keepdim=True)
        pad = ~(mask | empty)
        x = self.in_proj(hidden) + self.positions[:s].to(hidden.dtype)
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=pad)
        q = self.queries.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        y = self.decoder(q, x, memory_key_padding_mask=pad)
        return self.out_proj(y)
