"""Settings of ``xmm serve`` (pydantic: a bad value is an error naming the field)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from xmm.limits import max_prompt_chars

MiB = 1 << 20


class ServeConfig(BaseModel):
    """How the server listens, what it accepts and how it batches.

    Limits are checked before any model work: ``max_body_bytes`` on the raw request, ``max_prompt_chars`` on the
    messages' text before tokenising, ``max_tokens_limit`` on the requested answer length; the LLM's context is
    checked after tokenising. ``allow_files``: a folder whose files (and only those, symlinks resolved) a content
    part may name by path or ``file://`` url; None refuses every path. ``control_tokens``: what to do with
    chat-template control tokens (and modality placeholders) typed in message text: ``escape`` keeps them as text,
    ``refuse`` answers 400. ``audio_modality``: which modality an ``input_audio`` part feeds when the model has
    several that take audio files (None: the only one, else the request must say with ``"modality"``).
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    api_key: str | None = Field(None, description="clients must send 'Authorization: Bearer KEY'; None: no key")
    model_name: str | None = Field(None, description="the id /v1/models lists; default: the checkpoint folder's name")
    ui: bool = Field(False, description="serve the web chat at /")
    allow_files: Path | None = None
    max_body_bytes: int = Field(32 * MiB, gt=0)
    max_prompt_chars: int = Field(default_factory=max_prompt_chars, gt=0)
    max_tokens_limit: int = Field(1024, gt=0, description="the largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, gt=0)
    default_temperature: float = Field(0.0, ge=0.0, le=2.0, description="when a request gives none; 0 = greedy")
    max_batch_size: int = Field(16, gt=0)
    batch_wait_ms: float = Field(5.0, ge=0.0, description="how long the first request of a batch waits for others")
    max_queue: int = Field(256, gt=0, description="requests waiting beyond this get 429")
    max_media_items: int = Field(16, gt=0, description="media parts per request")
    max_stop: int = Field(4, gt=0, description="stop strings per request")
    control_tokens: str = Field("escape", pattern="^(escape|refuse)$")
    audio_modality: str | None = None

    @field_validator("allow_files")
    @classmethod
    def _folder(cls, v: Path | None) -> Path | None:
        if v is None:
            return None
        p = Path(v).expanduser()
        if not p.is_dir():
            raise ValueError(f"{p} is not a folder")
        return p.resolve()
