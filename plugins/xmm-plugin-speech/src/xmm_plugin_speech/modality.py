"""The ``speech`` modality: placeholder ``<speech>``, soundfile loading (30 s max), Whisper-base + C-Former default."""

from __future__ import annotations

from typing import Any

from xmm.modality import ModalitySpec
from xmm_plugin_audio.io import AUDIO_EXTENSIONS, AudioLoadConfig, AudioLoader, config_from_env, fingerprint_audio

NAME = "speech"
PLACEHOLDER = "<speech>"
DEFAULT_ENCODER = "whisper-base"
MAX_SECONDS = 30.0


def speech_spec(load_config: AudioLoadConfig | None = None, **overrides: Any) -> ModalitySpec:
    """The ``speech`` spec; ``load_config`` defaults to 30 s max with silence rejected (env ``XMM_SPEECH_*`` applies)."""
    load_config = load_config or config_from_env(NAME, AudioLoadConfig(max_seconds=MAX_SECONDS))
    fields: dict[str, Any] = {
        "name": NAME,
        "placeholder": PLACEHOLDER,
        "load": AudioLoader(load_config, modality=NAME),
        "encoder": DEFAULT_ENCODER,
        "bridge": default_bridge_config(),
        "file_extensions": AUDIO_EXTENSIONS,
        "description": "spoken language (WAV/FLAC/OGG, up to 30 s); the LLM hears it as one embedding per token",
        "fingerprint": fingerprint_audio,
    }
    fields.update(overrides)
    return ModalitySpec(**fields)


def default_bridge_config() -> dict[str, Any]:
    """X-LLM's speech interface (field names of ``xmm.bridges.cformer.CFormerConfig``): CIF integrates the 50 Hz
    Whisper frames into one vector per output token, a 2-layer C-Former contextualises them, an adapter maps them to
    the LLM width. ``max_tokens`` bounds what one utterance may fire (30 s of speech is ~100 LLM tokens)."""
    return {"type": "cformer", "hidden_size": 512, "num_layers": 2, "num_heads": 8, "max_tokens": 512}
