"""The ``qformer`` output projector: BLIP-2's Q-Former (:mod:`xmm.bridges.qformer`) with T learned queries that
cross-attend to the signal-token states (its "encoder" side) and an adapter to the decoder width D."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from xmm.projectors._registry import register_projector
from xmm.projectors.base import Projector, ProjectorConfig


class QFormerProjectorConfig(ProjectorConfig):
    """A smaller Q-Former than BLIP-2's by default (the memory is only S signal tokens): 4 layers of width 512, every
    layer cross-attending."""

    type: Literal["qformer"] = "qformer"
    hidden_size: int = Field(512, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(8, gt=0)
    intermediate_size: int = Field(2048, gt=0)
    cross_attention_frequency: int = Field(1, gt=0, description="layer i cross-attends when i % frequency == 0")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encoder_layernorm: bool = Field(True, description="LayerNorm on the signal-token states before cross-attention")

    @model_validator(mode="after")
    def _heads(self) -> QFormerProjectorConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


@register_projector("qformer")
class QFormerProjector(Projector):
    """``[B, S, d_llm]`` -> Q-Former with T queries -> linear adapter -> ``[B, T, D]``."""

    config_class = QFormerProjectorConfig

    def __init__(self, config: QFormerProjectorConfig) -> None:
        super().__init__(config)
        from xmm.bridges.qformer import QFormerBridge, QFormerConfig

        t, d = config.output_shape
        self.qformer = QFormerBridge(QFormerConfig(
            input_dim=config.input_dim, output_dim=d, num_queries=t, hidden_size=config.hidden_size,
            num_layers=config.num_layers, num_heads=config.num_heads, intermediate_size=config.intermediate_size,
            cross_attention_frequency=config.cross_attention_frequency, hidden_dropout=config.dropout,
            attention_dropout=config.dropout, encoder_layernorm=config.encoder_layernorm,
        ))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.check_input(hidden, mask)
        return self.qformer(hidden, mask).embeds
