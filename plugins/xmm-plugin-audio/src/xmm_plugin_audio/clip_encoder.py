"""``ClipAudioEncoder``: the shared shape of every audio encoder in xmm.

``preprocess`` loads (when given a raw input), resamples to the encoder's rate with soxr and cuts the audio into
fixed clips; ``forward`` encodes every clip of the batch at once (subclasses implement :meth:`encode_clips`), adds a
fixed sinusoidal clip-position embedding to each clip's tokens and concatenates the clips of an item, as ChatBridge
does with its 10 s BEATs clips. With ``clip_seconds=None`` (speech) the whole input is one clip and nothing is added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import MediaTooLargeError, ShapeError

from xmm_plugin_audio.clips import sinusoidal_embeddings, split_clips
from xmm_plugin_audio.io import AudioClip, AudioLoadConfig, load_audio

# a trailing piece shorter than this is dropped when there are earlier clips (it carries next to nothing)
MIN_LAST_CLIP_SECONDS = 0.1


class ClipAudioEncoder(Encoder):
    """Base of the audio encoders: clip cutting, batching and clip position embeddings.

    Subclasses set ``sample_rate`` (Hz), ``output_dim``, ``id``, ``revision`` and implement :meth:`encode_clips`.
    """

    sample_rate: int = 16000
    modality: str = "audio"

    def __init__(self, *, clip_seconds: float | None = 10.0, max_seconds: float = 600.0) -> None:
        super().__init__()
        self.clip_seconds = clip_seconds
        self.max_seconds = max_seconds

    # -- contract --------------------------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """One input -> ``waveform [C, S]`` float32 at ``sample_rate`` (C clips, zero-padded) and ``clip_samples [C]``."""
        clip = raw if isinstance(raw, AudioClip) else load_audio(raw, AudioLoadConfig(max_seconds=self.max_seconds), modality=self.modality)
        if clip.duration > self.max_seconds:
            raise MediaTooLargeError(
                f"is {clip.duration:.2f} s long; {self.id} takes at most {self.max_seconds:g} s (max_seconds)",
                source=clip.source,
                modality=self.modality,
            )
        samples = clip.resampled(self.sample_rate).samples
        if self.clip_seconds is None:
            pieces = [samples]
        else:
            pieces = split_clips(samples, round(self.clip_seconds * self.sample_rate), min_last=round(MIN_LAST_CLIP_SECONDS * self.sample_rate))
        longest = max(len(p) for p in pieces)
        wave = np.zeros((len(pieces), longest), dtype=np.float32)
        for i, p in enumerate(pieces):
            wave[i, : len(p)] = p
        return {"waveform": torch.from_numpy(wave), "clip_samples": torch.tensor([len(p) for p in pieces], dtype=torch.long)}

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad to ``waveform [B, C_max, S_max]`` and ``clip_samples [B, C_max]`` (0 marks a padding clip)."""
        if not items:
            raise ShapeError("cannot collate an empty batch")
        c_max = max(it["waveform"].shape[0] for it in items)
        s_max = max(it["waveform"].shape[1] for it in items)
        wave = torch.zeros(len(items), c_max, s_max)
        counts = torch.zeros(len(items), c_max, dtype=torch.long)
        for b, it in enumerate(items):
            c, s = it["waveform"].shape
            wave[b, :c, :s] = it["waveform"]
            counts[b, :c] = it["clip_samples"]
        return {"waveform": wave, "clip_samples": counts}

    def forward(self, waveform: torch.Tensor, clip_samples: torch.Tensor, **_: torch.Tensor) -> EncoderOutput:
        """``waveform [B, C, S]``, ``clip_samples [B, C]`` -> features ``[B, T, D]`` (clips concatenated), mask ``[B, T]``."""
        if waveform.dim() != 3 or clip_samples.shape != waveform.shape[:2]:
            raise ShapeError(
                f"{type(self).__name__} expects waveform [B, C, S] and clip_samples [B, C], got "
                f"{tuple(waveform.shape)} and {tuple(clip_samples.shape)}"
            )
        index = [(b, c) for b in range(waveform.shape[0]) for c in range(waveform.shape[1]) if clip_samples[b, c] > 0]
        if not index:
            raise ShapeError(f"{type(self).__name__}: the batch holds no audio")
        clips = [waveform[b, c, : int(clip_samples[b, c])] for b, c in index]
        feats, mask = self.encode_clips(clips)
        if feats.dim() != 3 or feats.shape[0] != len(clips) or mask.shape != feats.shape[:2]:
            raise ShapeError(f"{type(self).__name__}.encode_clips returned {tuple(feats.shape)} / {tuple(mask.shape)}")
        per_item: list[list[torch.Tensor]] = [[] for _ in range(waveform.shape[0])]
        for (b, c), f, m in zip(index, feats, mask):
            tokens = f[m.bool()]
            if self.clip_seconds is not None:
                tokens = tokens + sinusoidal_embeddings(torch.tensor([c]), tokens.shape[-1]).to(tokens)
            per_item[b].append(tokens)
        outs = [EncoderOutput(torch.cat(p).unsqueeze(0), torch.ones(1, sum(len(t) for t in p), dtype=torch.bool, device=feats.device)) for p in per_item]
        return EncoderOutput.pad(outs)

    def encode_clips(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """Encode mono clips (each ``[S_i]`` at ``sample_rate``) -> features ``[N, T, D]`` and mask ``[N, T]``."""
        raise NotImplementedError

    def preprocess_config(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "clip_seconds": self.clip_seconds, "max_seconds": self.max_seconds}

    def tokens_per_second(self) -> float | None:
        """Encoder tokens per second of audio, when fixed (for docs and sizing)."""
        return None


def frames_for(num_samples: int, hop: int) -> int:
    """Frames of a centred framing with hop ``hop`` over ``num_samples`` samples (at least one)."""
    return max(1, math.ceil(num_samples / hop))
