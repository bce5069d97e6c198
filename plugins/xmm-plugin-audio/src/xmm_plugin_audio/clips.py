"""Cutting long audio into fixed clips and the clips' position embeddings (ChatBridge: 10 s clips, concatenated)."""

from __future__ import annotations

import math

import numpy as np
import torch


def split_clips(samples: np.ndarray, clip_samples: int, *, min_last: int = 1) -> list[np.ndarray]:
    """Cut ``samples [N]`` into consecutive clips of ``clip_samples`` (the last one may be shorter).

    A trailing piece shorter than ``min_last`` samples is dropped unless it is the only clip (an encoder cannot
    use a few milliseconds of audio, and folding it into the previous clip would break the fixed clip length).
    """
    if clip_samples <= 0:
        raise ValueError(f"clip_samples must be positive, got {clip_samples}")
    clips = [samples[i : i + clip_samples] for i in range(0, len(samples), clip_samples)]
    if len(clips) > 1 and len(clips[-1]) < min_last:
        clips.pop()
    return clips


def sinusoidal_embeddings(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embeddings (Vaswani et al.) of integer ``positions [N]`` -> ``[N, dim]`` float32.

    Fixed rather than learned so the encoder (which adds them) stays frozen and parameter-free; the trainable bridge
    learns to read them.
    """
    half = (dim + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = positions.float()[:, None] * freqs[None, :]
    emb = torch.empty(len(positions), 2 * half)
    emb[:, 0::2] = torch.sin(angles)
    emb[:, 1::2] = torch.cos(angles)
    return emb[:, :dim]
