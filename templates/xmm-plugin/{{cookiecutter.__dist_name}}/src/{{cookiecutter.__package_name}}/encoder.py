"""A frozen encoder for `{{ cookiecutter.modality }}` built on a simple, weight-free featurisation.

The signal is cut into frames of ``frame_size`` values; each frame becomes one token whose features are four
statistics (mean, standard deviation, min, max) and the log-magnitude spectrum of the frame. It works on any
numeric signal, so the plugin is usable end to end from the start. Replace :meth:`preprocess` and :meth:`forward`
with a pretrained model when you have one (and update ``id``, ``revision`` and ``output_dim``): checkpoints record
``id`` and ``revision`` and refuse to load against a different encoder.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import ConfigError

N_STATS = 4


class {{ cookiecutter.__class_name }}Encoder(Encoder):
    """Signal ``[N]`` -> frames ``[T, frame_size]`` -> features ``[B, T, 4 + frame_size // 2 + 1]``."""

    id = "{{ cookiecutter.__dist_name }}/{{ cookiecutter.__encoder_name }}"
    revision = "featurize-v1"

    def __init__(self, frame_size: int = 32, max_frames: int = 64) -> None:
        super().__init__()
        if frame_size < 2:
            raise ConfigError(f"must be >= 2, got {frame_size}", field="frame_size")
        if max_frames < 1:
            raise ConfigError(f"must be >= 1, got {max_frames}", field="max_frames")
        self.frame_size = frame_size
        self.max_frames = max_frames
        self.output_dim = N_STATS + frame_size // 2 + 1
        self.freeze()

    def preprocess_config(self) -> dict[str, Any]:
        return {"frame_size": self.frame_size, "max_frames": self.max_frames}

    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """Loaded signal ``[N]`` -> ``{"frames": [T, frame_size]}``, T = min(ceil(N / frame_size), max_frames)."""
        signal = torch.as_tensor(np.asarray(raw, dtype=np.float32)).reshape(-1)
        n_frames = min(max(1, math.ceil(signal.numel() / self.frame_size)), self.max_frames)
        signal = signal[: n_frames * self.frame_size]
        # the last frame is zero-padded; long signals are truncated to max_frames frames
        signal = torch.nn.functional.pad(signal, (0, n_frames * self.frame_size - signal.numel()))
        return {"frames": signal.reshape(n_frames, self.frame_size)}

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """frames ``[B, T, frame_size]`` (+ lengths ``[B]`` when padded) -> features ``[B, T, D]``, mask ``[B, T]``."""
        stats = torch.stack(
            [frames.mean(-1), frames.std(-1, unbiased=False), frames.amin(-1), frames.amax(-1)], dim=-1
        )
        spectrum = torch.fft.rfft(frames, dim=-1).abs().log1p()
        features = torch.cat([stats, spectrum], dim=-1)
        steps = torch.arange(frames.shape[1], device=frames.device)
        if lengths is None:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        else:
            mask = steps[None, :] < lengths.to(frames.device)[:, None]
        return EncoderOutput(features * mask[..., None], mask)
