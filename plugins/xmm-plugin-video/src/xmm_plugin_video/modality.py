"""The ``video`` modality: placeholder ``<video>``, PyAV frame sampling, frames through the image encoder + a Q-Former."""

from __future__ import annotations

from functools import partial
from typing import Any

from xmm.modality import ModalitySpec

from xmm_plugin_video.decoding import VideoDecodeConfig, load_video, video_fingerprint

NAME = "video"
PLACEHOLDER = "<video>"
DEFAULT_ENCODER = "video-frames"
# a Q-Former over all frames' tokens, as Video-LLaMA's video Q-Former (field names of QFormerConfig)
DEFAULT_BRIDGE = {"type": "qformer", "num_queries": 32}
FILE_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ogv")


def video_spec(decode_config: VideoDecodeConfig | None = None, **overrides: Any) -> ModalitySpec:
    """The ``video`` spec; ``decode_config`` (default: 8 uniformly sampled frames) is part of the content hash."""
    cfg = decode_config or VideoDecodeConfig()
    fields: dict[str, Any] = {
        "name": NAME,
        "placeholder": PLACEHOLDER,
        "load": partial(load_video, config=cfg),
        "encoder": DEFAULT_ENCODER,
        "bridge": dict(DEFAULT_BRIDGE),
        "file_extensions": FILE_EXTENSIONS,
        "description": f"video files sampled to {cfg.num_frames} frames ({cfg.sampling}) with PyAV; frames share the image encoder",
        "fingerprint": partial(video_fingerprint, config=cfg),
    }
    fields.update(overrides)
    return ModalitySpec(**fields)
