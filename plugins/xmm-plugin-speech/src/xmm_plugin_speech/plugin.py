"""Entry point of xmm-plugin-speech (group ``xmm``, name ``speech``): the modality, its encoders, recipe and demo task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmm import hookimpl


@hookimpl
def xmm_modalities() -> list[Any]:
    from xmm_plugin_speech.modality import speech_spec

    return [speech_spec()]


@hookimpl
def xmm_encoders() -> dict[str, Callable[..., Any]]:
    # factories import lazily: listing plugins must not load torch or convert models
    def whisper_base(**config: Any) -> Any:
        from xmm_plugin_speech.encoders import WhisperBaseEncoder

        return WhisperBaseEncoder(**config)

    def hf_speech(**config: Any) -> Any:
        from xmm_plugin_speech.encoders import HFSpeechEncoder

        return HFSpeechEncoder(**config)

    return {"whisper-base": whisper_base, "hf-speech": hf_speech}


@hookimpl
def xmm_recipes() -> dict[str, Any]:
    from xmm_plugin_speech.recipes import RECIPES

    return dict(RECIPES)


@hookimpl
def xmm_demo_tasks() -> dict[str, Any]:
    from xmm_plugin_speech.demo import DEMO_TASKS

    return dict(DEMO_TASKS)
