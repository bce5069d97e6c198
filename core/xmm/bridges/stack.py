"""``stack-mlp``: Ultravox-style frame stacking and a gated MLP, a simple speech bridge to compare with CIF.

``k`` consecutive encoder frames are concatenated along the channel axis (``[B, T, D] -> [B, ceil(T / k), k * D]``;
the last window of an item is zero-filled), normalised, and mapped to the LLM width by a SwiGLU MLP
(``W_out(norm(silu(W_gate x) * W_up x))``, as Ultravox's projector does). Whisper's 50 Hz frames with ``k = 8`` give 6.25
LLM tokens per second of speech, about twice the rate of the words' tokens, so nothing is cut, and unlike CIF the
number of tokens follows the duration, not the content.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xmm.bridges._registry import register_bridge
from xmm.bridges.base import Bridge, BridgeConfig, BridgeOutput


class StackMLPConfig(BridgeConfig):
    type: Literal["stack-mlp"] = "stack-mlp"
    stack: int = Field(8, ge=1, le=64, description="consecutive encoder frames concatenated into one LLM token")
    hidden_dim: int | None = Field(None, gt=0, description="width of the gated layer (default: 2 x output_dim)")


@register_bridge("stack-mlp")
class StackMLPBridge(Bridge):
    """Frames ``[B, T, D_enc]`` -> ``[B, ceil(T / k), d_llm]``; a token is masked when all its frames are padding."""

    config_class = StackMLPConfig
    config: StackMLPConfig

    def __init__(self, config: StackMLPConfig) -> None:
        super().__init__(config)
        width = config.input_dim * config.stack
        hidden = config.hidden_dim or 2 * config.output_dim
        self.in_norm = nn.LayerNorm(width)
        self.gate_up = nn.Linear(width, 2 * hidden)
        # normalised between the gate and the output map (Ultravox does the same), so the output's scale is learned
        # by one matrix and does not drift with the stacked frames' magnitudes
        self.mid_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, config.output_dim)

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> StackMLPConfig:
        return StackMLPConfig(input_dim=input_dim, output_dim=output_dim, stack=2, hidden_dim=16)

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int | None:
        """Q follows the input's length: ``ceil(T / k)`` (None when T is not known)."""
        if num_input_tokens is None:
            return None
        return -(-num_input_tokens // self.config.stack)

    def stack_frames(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, D]``, mask ``[B, T]`` -> ``[B, ceil(T / k), k * D]`` (padding zeroed), mask ``[B, ceil(T / k)]``."""
        k = self.config.stack
        b, t, d = features.shape
        pad = (-t) % k
        x = features * mask[..., None].to(features.dtype)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
        n = (t + pad) // k
        return x.reshape(b, n, k * d), mask.reshape(b, n, k).any(dim=-1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:
        """features ``[B, T, D_enc]``, mask ``[B, T]`` -> embeds ``[B, ceil(T / k), d_llm]`` and mask."""
        valid = self.check_input(features, mask)
        x, out_mask = self.stack_frames(features, valid)
        gate, up = self.gate_up(self.in_norm(x)).chunk(2, dim=-1)
        y = self.out(self.mid_norm(F.silu(gate) * up))
        return BridgeOutput(y * out_mask[..., None].to(y.dtype), out_mask)
