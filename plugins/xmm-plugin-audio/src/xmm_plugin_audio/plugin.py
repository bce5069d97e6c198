"""Entry point of xmm-plugin-audio (group ``xmm``, name ``audio``): the modality, its encoders, recipe and demo task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmm import hookimpl


@hookimpl
def xmm_modalities() -> list[Any]:
    from xmm_plugin_audio.modality import audio_spec

    return [audio_spec()]


@hookimpl
def xmm_encoders() -> dict[str, Callable[..., Any]]:
    # factories import lazily: listing plugins must not load torch models
    def torchcrepe(**config: Any) -> Any:
        from xmm_plugin_audio.crepe import CrepeEncoder

        return CrepeEncoder(**config)

    def hf_audio(**config: Any) -> Any:
        from xmm_plugin_audio.hf import HFAudioEncoder

        return HFAudioEncoder(**config)

    return {"torchcrepe": torchcrepe, "hf-audio": hf_audio}


@hookimpl
def xmm_recipes() -> dict[str, Any]:
    from xmm_plugin_audio.recipes import RECIPES

    return dict(RECIPES)


@hookimpl
def xmm_demo_tasks() -> dict[str, Any]:
    from xmm_plugin_audio.demo import DEMO_TASKS

    return dict(DEMO_TASKS)
