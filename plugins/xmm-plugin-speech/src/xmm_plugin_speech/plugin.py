"""Entry point of xmm-plugin-speech (group ``xmm``, name ``speech``): the modality and its encoders."""

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
