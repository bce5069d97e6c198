"""xmm-plugin-video: the ``<video>`` modality for xmm (PyAV frame sampling, frames through an image encoder with
temporal embeddings, a synthetic moving-shapes dataset for the demo)."""

from __future__ import annotations

from xmm_plugin_video.decoding import VideoClip, VideoDecodeConfig, load_video, video_fingerprint

__version__ = "0.1.0"

__all__ = ["VideoClip", "VideoDecodeConfig", "__version__", "load_video", "video_fingerprint"]
