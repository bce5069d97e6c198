"""Speech encoders: the offline Whisper-base default and any transformers speech encoder by id/path.

Both are :class:`xmm_plugin_audio.hf.HFAudioEncoder` without clip cutting (one utterance = one input). Whisper pads
every input to 30 s (its encoder only accepts 3000 log-mel frames) and returns ``[1, 1500, D]``; only the frames that
cover real audio (50 per second) are kept unmasked, so a bridge sees ``ceil(seconds * 50)`` tokens.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from xmm.persist import validate_config
from xmm_plugin_audio.hf import HFAudioEncoder, HFAudioEncoderConfig

WHISPER_MAX_SECONDS = 30.0


class HFSpeechEncoderConfig(HFAudioEncoderConfig):
    """``hf-speech``: like ``hf-audio`` but one clip per utterance and a 30 s limit by default."""

    clip_seconds: float | None = Field(None, gt=0, description="None = the whole utterance is one input")
    max_seconds: float = Field(WHISPER_MAX_SECONDS, gt=0)


class HFSpeechEncoder(HFAudioEncoder):
    """A frozen transformers speech encoder (Whisper encoder, wav2vec2, HuBERT, ...) by Hub id or local folder."""

    config_class = HFSpeechEncoderConfig
    modality = "speech"


class WhisperBaseConfig(BaseModel):
    """Settings of the offline ``whisper-base`` encoder."""

    model_config = ConfigDict(extra="forbid")

    layer: int | None = Field(None, description="hidden-state index; None = the encoder's final (layer-normed) output")
    max_seconds: float = Field(WHISPER_MAX_SECONDS, gt=0, le=WHISPER_MAX_SECONDS)
    window_seconds: int | None = Field(None, ge=1, le=30, description="encode shorter windows than 30 s (faster, approximate)")


class WhisperBaseEncoder(HFSpeechEncoder):
    """Whisper-base's encoder from the CTranslate2 files on PyPI (converted once, hashes checked): ``D = 512``."""

    def __init__(self, **config: Any) -> None:
        from xmm_plugin_speech.whisper_ct2 import META_NAME, whisper_base_dir

        cfg: WhisperBaseConfig = validate_config(WhisperBaseConfig, config, source="whisper-base encoder config")
        path = whisper_base_dir()
        super().__init__(model=str(path), layer=cfg.layer, max_seconds=cfg.max_seconds, window_seconds=cfg.window_seconds, local_files_only=True)
        meta = json.loads((path / META_NAME).read_text())
        self.id = "whisper-base"
        self.revision = meta["revision"]
        self.source_id = meta["id"]
