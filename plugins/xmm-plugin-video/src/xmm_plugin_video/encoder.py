"""The video encoder: sampled frames through an image encoder, plus temporal position embeddings.

``[B, F, 3, H, W]`` frames -> the image encoder per frame ``[B*F, T, D]`` -> ``+ PE(frame index)`` (the same vector on
every token of a frame) -> ``[B, F*T, D]``: all frames' tokens in one sequence, which a Q-Former or perceiver bridge
then reads (Video-LLaMA's video Q-Former / ChatBridge's perceiver over concatenated frames). The bridge's
cross-attention does not see token order, so the temporal embedding is what tells it which frame a token came from.

The embeddings are fixed sinusoids (Vaswani et al.), so the encoder stays frozen and its outputs stay cacheable.
Frames are cached individually (in memory, optionally on disk) under :meth:`VideoFrameEncoder.frame_key`: a hash of
the preprocessed frame tensor and the image encoder's fingerprint, so a frame shared by two clips, two sampling
configs or two epochs is encoded once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import MediaError, ShapeError
from xmm.io import atomic_write
from xmm.persist import validate_config

from xmm_plugin_video.decoding import VideoClip

ENCODER_NAME = "video-frames"


class VideoEncoderConfig(BaseModel):
    """Config of the ``video-frames`` encoder (keyword arguments of ``create_encoder``)."""

    model_config = ConfigDict(extra="forbid")

    frame_encoder: str = Field(default="efficientnet-lite0", description="registry name of the image encoder for frames")
    frame_encoder_config: dict[str, Any] = Field(default_factory=dict, description="its keyword arguments")
    share_frame_encoder: bool = Field(default=True, description="use the image plugin's shared instance (one copy in memory)")
    temporal_embedding: Literal["sinusoidal", "none"] = Field(default="sinusoidal", description="added per frame index")
    temporal_scale: float = Field(default=1.0, ge=0, description="amplitude of the sinusoids (features have RMS ~0.7)")
    frame_batch_size: int = Field(default=32, ge=1, description="frames per image-encoder call (bounds memory)")
    frame_cache_size: int = Field(default=64, ge=0, description="frames kept in the in-memory cache (0 = off)")
    frame_cache_dir: str | None = Field(default=None, description="also cache frame features as files here")


class VideoFrameEncoder(Encoder):
    """Frames ``[B, F, 3, H, W]`` (+ ``lengths [B]`` when clips differ in frame count) -> ``[B, F*T, D]``.

    Tokens of frame ``f`` occupy positions ``f*T .. f*T+T-1``; padded frames are masked out. ``output_dim`` is the
    image encoder's D. Frozen; ``id`` is ``video/<image encoder id>`` and ``revision`` the image encoder's revision.
    """

    def __init__(self, config: VideoEncoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else validate_config(VideoEncoderConfig, kwargs)
        self.frame_encoder = _create_frame_encoder(self.config)
        self.id = f"video/{self.frame_encoder.id}"
        self.revision = self.frame_encoder.revision
        self.output_dim = self.frame_encoder.output_dim
        self._cache = FrameFeatureCache(self.config.frame_cache_size, self.config.frame_cache_dir)
        self._frame_fp = hashlib.sha256(json.dumps(self.frame_encoder.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()
        self.freeze()

    # -- contract -------------------------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """A :class:`VideoClip` -> the image encoder's tensors stacked over frames, e.g. ``pixel_values [F, 3, H, W]``."""
        if not isinstance(raw, VideoClip):
            raise MediaError(f"the video encoder takes a loaded VideoClip (from the video modality's load()), got {type(raw).__name__}",
                             source=raw, modality="video")
        if not raw.frames:
            raise MediaError("the clip has no frames", source=raw.source, modality="video")
        per_frame = [self.frame_encoder.preprocess(f) for f in raw.frames]
        return {k: torch.stack([p[k] for p in per_frame]) for k in per_frame[0]}

    def preprocess_config(self) -> dict[str, Any]:
        c = self.config
        return {"frame_encoder": self.frame_encoder.fingerprint(), "temporal_embedding": c.temporal_embedding,
                "temporal_scale": c.temporal_scale}

    def forward(self, lengths: torch.Tensor | None = None, **frames: torch.Tensor) -> EncoderOutput:
        """Batched frames (each tensor ``[B, F, ...]``) -> features ``[B, F*T, D]``, mask ``[B, F*T]``."""
        if not frames:
            raise ShapeError("VideoFrameEncoder.forward needs the frame tensors from preprocess/collate")
        first = next(iter(frames.values()))
        if first.dim() < 3:
            raise ShapeError(f"video frame tensors must be [B, F, ...], got {tuple(first.shape)}")
        b, f = first.shape[:2]
        valid = torch.ones(b, f, dtype=torch.bool, device=first.device)
        if lengths is not None:
            valid = torch.arange(f, device=first.device)[None, :] < lengths.to(first.device)[:, None]
        flat = {k: v[valid] for k, v in frames.items()}  # [N, ...] real frames only
        feats, fmask = self._encode_frames(flat)  # [N, T, D], [N, T]
        t, d = feats.shape[1:]
        out = feats.new_zeros(b, f, t, d)
        out[valid] = feats
        mask = torch.zeros(b, f, t, dtype=torch.bool, device=feats.device)
        mask[valid] = fmask
        if self.config.temporal_embedding == "sinusoidal" and self.config.temporal_scale > 0:
            pe = sinusoidal_embedding(f, d, device=out.device, dtype=torch.float32) * self.config.temporal_scale
            out = (out.float() + pe[None, :, None, :]).to(out.dtype) * mask[..., None]
        return EncoderOutput(out.reshape(b, f * t, d), mask.reshape(b, f * t))

    # -- frames ---------------------------------------------------------------------------------------------------
    def frame_key(self, frame: dict[str, torch.Tensor]) -> str:
        """Cache key of one preprocessed frame (tensors without batch axis): sha256 of its tensors' bytes, the
        image encoder's fingerprint and the autocast dtype (bf16 and fp32 features differ slightly)."""
        h = hashlib.sha256(self._frame_fp.encode())
        h.update(_autocast_tag().encode())
        for k in sorted(frame):
            v = frame[k].detach().to("cpu").contiguous()
            h.update(f"|{k}:{v.dtype}:{tuple(v.shape)}|".encode())
            h.update(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.view(torch.int16).numpy().tobytes())
        return h.hexdigest()

    def _encode_frames(self, flat: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        n = next(iter(flat.values())).shape[0]
        # a frame encoder being trained changes its outputs: only a frozen one's features are cacheable
        use_cache = self._cache.enabled and self.frame_encoder.frozen
        keys = [self.frame_key({k: v[i] for k, v in flat.items()}) for i in range(n)] if use_cache else []
        results: list[tuple[torch.Tensor, torch.Tensor] | None] = [self._cache.get(k) for k in keys] if use_cache else [None] * n
        todo = [i for i, r in enumerate(results) if r is None]
        bs = self.config.frame_batch_size
        for s in range(0, len(todo), bs):
            idx = todo[s : s + bs]
            out = self.frame_encoder(**{k: v[idx] for k, v in flat.items()})
            for j, i in enumerate(idx):
                results[i] = (out.features[j], out.mask[j])
                if use_cache:
                    self._cache.put(keys[i], out.features[j], out.mask[j])
        done = [r for r in results if r is not None]  # every frame is filled by now
        device = next(iter(flat.values())).device
        # cached and fresh features may differ in dtype (e.g. fresh under autocast): use the fresh ones' dtype
        dtype = done[todo[0]][0].dtype if todo else done[0][0].dtype
        feats = torch.stack([r[0].to(device=device, dtype=dtype) for r in done])
        masks = torch.stack([r[1].to(device) for r in done])
        return feats, masks


class FrameFeatureCache:
    """Per-frame features: an LRU of ``capacity`` entries in memory, and ``directory/<key>.safetensors`` files when a
    directory is given (shared between processes and runs; written atomically)."""

    def __init__(self, capacity: int, directory: str | None = None) -> None:
        self.capacity = capacity
        self.directory = Path(directory) if directory else None
        self._mem: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 or self.directory is not None

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                self.hits += 1
                return self._mem[key]
        if self.directory is not None:
            path = self.directory / f"{key}.safetensors"
            if path.exists():
                from safetensors.torch import load_file

                try:
                    data = load_file(str(path))
                    item = (data["features"], data["mask"].bool())
                except Exception:  # a damaged cache file is a miss, and is rewritten
                    item = None
                if item is not None:
                    self._remember(key, item)
                    self.hits += 1
                    return item
        self.misses += 1
        return None

    def put(self, key: str, features: torch.Tensor, mask: torch.Tensor) -> None:
        item = (features.detach().to("cpu").clone(), mask.detach().to("cpu").clone())
        self._remember(key, item)
        if self.directory is not None:
            from safetensors.torch import save_file

            tensors = {"features": item[0].contiguous(), "mask": item[1].to(torch.uint8).contiguous()}
            atomic_write(self.directory / f"{key}.safetensors", lambda p: save_file(tensors, str(p)))

    def _remember(self, key: str, item: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._mem[key] = item
            self._mem.move_to_end(key)
            while len(self._mem) > self.capacity:
                self._mem.popitem(last=False)

    def __len__(self) -> int:
        return len(self._mem)


def sinusoidal_embedding(num_positions: int, dim: int, *, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed position embeddings ``[num_positions, dim]``: sin on even, cos on odd channels (Vaswani et al. 2017)."""
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
    angle = pos / torch.pow(10000.0, i / dim)
    pe = torch.zeros(num_positions, dim, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe.to(dtype)


def _autocast_tag() -> str:
    for device in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(device):
                return f"autocast-{device}-{torch.get_autocast_dtype(device)}"
        except (RuntimeError, TypeError, AttributeError):  # device type not built into this torch
            continue
    return "fp"


def _create_frame_encoder(cfg: VideoEncoderConfig) -> Encoder:
    from xmm.registry import get_registry

    reg = get_registry()
    kwargs = dict(cfg.frame_encoder_config)
    # the image plugin's factories accept share=True and hand out one frozen instance per config
    if cfg.share_frame_encoder and reg.owner("encoders", cfg.frame_encoder) == "image":
        kwargs.setdefault("share", True)
    return reg.create_encoder(cfg.frame_encoder, **kwargs)


__all__ = ["FrameFeatureCache", "VideoEncoderConfig", "VideoFrameEncoder", "sinusoidal_embedding"]
