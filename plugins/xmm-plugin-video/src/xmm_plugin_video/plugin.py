"""Entry point of xmm-plugin-video (group ``xmm``, name ``video``): the ``video`` modality, its encoder, recipe and
demo task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmm import hookimpl


@hookimpl
def xmm_modalities() -> list[Any]:
    from xmm_plugin_video.modality import video_spec

    return [video_spec()]


@hookimpl
def xmm_encoders() -> dict[str, Callable[..., Any]]:
    def video_frames(**config: Any) -> Any:
        # imported on use: listing plugins must not load torch models
        from xmm_plugin_video.encoder import VideoFrameEncoder

        return VideoFrameEncoder(**config)

    return {"video-frames": video_frames}


@hookimpl
def xmm_recipes() -> dict[str, Any]:
    from xmm_plugin_video.recipes import RECIPES

    return dict(RECIPES)


@hookimpl
def xmm_demo_tasks() -> dict[str, Any]:
    from xmm_plugin_video.demo import DEMO_TASKS

    return dict(DEMO_TASKS)
