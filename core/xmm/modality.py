"""``ModalitySpec``: what a plugin declares about one input modality."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError, MediaError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality: its name, its placeholder token, how to load raw input and which encoder/bridge to use.

    ``load(raw)`` takes a path (``str``/``Path``), raw ``bytes`` or an in-memory object (e.g. a PIL image) and returns
    the loaded item that the encoder's ``preprocess`` accepts; it raises an :class:`xmm.errors.MediaError` subclass
    naming the input when the input is unusable. ``fingerprint(raw)`` returns a content hash for the feature cache.
    """

    name: str
    placeholder: str
    load: Callable[[Any], Any]
    default_encoder: str
    default_encoder_config: Mapping[str, Any] = field(default_factory=dict)
    default_bridge: str = "qformer"
    default_bridge_config: Mapping[str, Any] = field(default_factory=dict)
    num_query_tokens: int = 32
    file_extensions: tuple[str, ...] = ()
    description: str = ""
    fingerprint: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"modality name {self.name!r} must match {_NAME.pattern}", field="name")
        if not (self.placeholder.startswith("<") and self.placeholder.endswith(">")):
            raise ConfigError(f"placeholder {self.placeholder!r} must look like '<name>'", field="placeholder")
        if self.num_query_tokens < 1:
            raise ConfigError("num_query_tokens must be >= 1", field="num_query_tokens")

    def content_hash(self, raw: Any) -> str:
        """Stable sha256 of a raw input: file bytes for paths, the bytes themselves, or the spec's fingerprint."""
        if self.fingerprint is not None:
            return self.fingerprint(raw)
        return default_fingerprint(raw, modality=self.name)


def default_fingerprint(raw: Any, *, modality: str | None = None) -> str:
    """sha256 of a path's bytes or of raw bytes; other objects need a modality-specific fingerprint."""
    h = hashlib.sha256()
    if isinstance(raw, (str, Path)):
        try:
            with open(raw, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise MediaError(f"cannot read file: {e.strerror or e}", source=raw, modality=modality) from e
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        h.update(bytes(raw))
    else:
        raise MediaError(
            f"cannot fingerprint an in-memory {type(raw).__name__} for the cache; pass a path or bytes",
            source=raw,
            modality=modality,
        )
    return h.hexdigest()
