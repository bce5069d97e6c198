"""The ``audio`` modality (non-speech sound): placeholder ``<audio>``, soundfile loading, CREPE encoder by default."""

from __future__ import annotations

from typing import Any

from xmm.modality import ModalitySpec

from xmm_plugin_audio.io import AUDIO_EXTENSIONS, AudioLoadConfig, AudioLoader, config_from_env, fingerprint_audio

NAME = "audio"
PLACEHOLDER = "<audio>"
DEFAULT_ENCODER = "torchcrepe"


def audio_spec(load_config: AudioLoadConfig | None = None, **overrides: Any) -> ModalitySpec:
    """The ``audio`` spec; ``load_config`` defaults to 600 s max with silence rejected (env ``XMM_AUDIO_*`` applies)."""
    load_config = load_config or config_from_env(NAME, AudioLoadConfig(max_seconds=600.0))
    fields: dict[str, Any] = {
        "name": NAME,
        "placeholder": PLACEHOLDER,
        "load": AudioLoader(load_config, modality=NAME),
        "encoder": DEFAULT_ENCODER,
        "bridge": default_bridge_config(),
        "file_extensions": AUDIO_EXTENSIONS,
        "description": "non-speech sound (WAV/FLAC/OGG); long audio is cut into 10 s clips encoded one by one",
        "fingerprint": fingerprint_audio,
    }
    fields.update(overrides)
    return ModalitySpec(**fields)


def default_bridge_config() -> dict[str, Any]:
    """A compact Q-Former (field names of ``xmm.bridges.qformer.QFormerConfig``): 32 queries over the 10 tokens/s
    CREPE features; 4 layers of width 256 (cross-attention every 2nd layer) suit 617-wide pitch features and keep
    CPU training fast. BLIP-2's 12x768 is one ``bridge:`` override away."""
    return {"type": "qformer", "num_queries": 32, "hidden_size": 256, "num_layers": 4, "num_heads": 4,
            "intermediate_size": 1024}
