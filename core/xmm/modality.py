"""``ModalitySpec``: what a plugin declares about one input modality."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError, MediaError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# keywords of the wider spec of xmm <= 0.1, accepted for one release
_DEPRECATED = ("default_encoder", "default_encoder_config", "default_bridge", "default_bridge_config", "num_query_tokens")


@dataclass(frozen=True, init=False)
class ModalitySpec:
    """One input modality, as a plugin declares it.

    Required: ``name``, ``load`` and ``encoder``. ``load(raw)`` takes a path (``str``/``Path``), raw ``bytes`` or an
    in-memory object (e.g. a PIL image) and returns what the encoder's ``preprocess`` accepts; it raises an
    :class:`xmm.errors.MediaError` subclass naming the input when the input is unusable. ``placeholder`` defaults to
    ``<name>``. ``encoder`` / ``encoder_config``: registry name and options of the default encoder. ``bridge``: the
    default bridge config with its ``type`` (``{"type": "qformer", "num_queries": 32}``; dims are filled in by the
    model). How many LLM positions an item takes is asked of the encoder and the bridge, never declared here.
    ``fingerprint(raw)`` returns a content hash for the feature cache (default: the bytes of a path or of raw bytes).

    The keywords ``default_encoder``, ``default_encoder_config``, ``default_bridge``, ``default_bridge_config`` and
    ``num_query_tokens`` of earlier releases still work for one release, with a :class:`DeprecationWarning`.
    """

    name: str
    placeholder: str
    load: Callable[[Any], Any]
    encoder: str
    encoder_config: Mapping[str, Any]
    bridge: Mapping[str, Any]
    file_extensions: tuple[str, ...]
    description: str
    fingerprint: Callable[[Any], str] | None

    def __init__(
        self,
        name: str,
        placeholder: str | None = None,
        load: Callable[[Any], Any] | None = None,
        *,
        encoder: str | None = None,
        encoder_config: Mapping[str, Any] | None = None,
        bridge: Mapping[str, Any] | None = None,
        file_extensions: tuple[str, ...] = (),
        description: str = "",
        fingerprint: Callable[[Any], str] | None = None,
        **deprecated: Any,
    ) -> None:
        unknown = sorted(set(deprecated) - set(_DEPRECATED))
        if unknown:
            raise TypeError(f"ModalitySpec got unexpected keyword arguments {unknown}")
        if deprecated:
            warnings.warn(f"ModalitySpec({', '.join(sorted(deprecated))}=...) is deprecated: say encoder=, "
                          "encoder_config= and bridge={'type': ..., **options}; the number of media tokens is asked "
                          "of the encoder and bridge", DeprecationWarning, stacklevel=2)
        encoder = encoder if encoder is not None else deprecated.get("default_encoder")
        if encoder_config is None:
            encoder_config = deprecated.get("default_encoder_config") or {}
        if bridge is None:
            bridge = {"type": deprecated.get("default_bridge", "qformer"), **dict(deprecated.get("default_bridge_config") or {})}
        legacy_q = deprecated.get("num_query_tokens")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"modality name {name!r} must match {_NAME.pattern}", field="name")
        placeholder = f"<{name}>" if placeholder is None else placeholder
        if not (isinstance(placeholder, str) and placeholder.startswith("<") and placeholder.endswith(">")):
            raise ConfigError(f"placeholder {placeholder!r} must look like '<name>'", field="placeholder")
        if not callable(load):
            raise ConfigError(f"modality '{name}': load must be a callable raw -> loaded item", field="load")
        if not isinstance(encoder, str) or not encoder:
            raise ConfigError(f"modality '{name}' needs the registry name of its default encoder", field="encoder")
        if not isinstance(bridge, Mapping) or not isinstance(bridge.get("type"), str):
            raise ConfigError(f"modality '{name}': bridge must be a bridge config with a 'type'", field="bridge")
        if legacy_q is not None and (not isinstance(legacy_q, int) or legacy_q < 1):
            raise ConfigError("num_query_tokens must be >= 1", field="num_query_tokens")
        for key, value in (("name", name), ("placeholder", placeholder), ("load", load), ("encoder", encoder),
                           ("encoder_config", dict(encoder_config)), ("bridge", dict(bridge)),
                           ("file_extensions", tuple(file_extensions)), ("description", description),
                           ("fingerprint", fingerprint)):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_legacy_query_tokens", legacy_q)

    def content_hash(self, raw: Any) -> str:
        """Stable sha256 of a raw input: file bytes for paths, the bytes themselves, or the spec's fingerprint."""
        if self.fingerprint is not None:
            return self.fingerprint(raw)
        return default_fingerprint(raw, modality=self.name)

    # -- the wider spec of earlier releases, read-only, for one release ------------------------------------------
    def _deprecated(self, old: str, new: str) -> None:
        warnings.warn(f"ModalitySpec.{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)

    @property
    def default_encoder(self) -> str:
        self._deprecated("default_encoder", "spec.encoder")
        return self.encoder

    @property
    def default_encoder_config(self) -> Mapping[str, Any]:
        self._deprecated("default_encoder_config", "spec.encoder_config")
        return self.encoder_config

    @property
    def default_bridge(self) -> str:
        self._deprecated("default_bridge", "spec.bridge['type']")
        return str(self.bridge["type"])

    @property
    def default_bridge_config(self) -> Mapping[str, Any]:
        self._deprecated("default_bridge_config", "spec.bridge")
        return {k: v for k, v in self.bridge.items() if k != "type"}

    @property
    def num_query_tokens(self) -> int | None:
        """The number the spec was given (None when not): the model asks the encoder and bridge instead."""
        self._deprecated("num_query_tokens", "MultimodalLM.num_media_tokens(item) or the bridge's num_output_tokens()")
        return legacy_query_tokens(self)


def legacy_query_tokens(spec: ModalitySpec) -> int | None:
    """The deprecated ``num_query_tokens`` a spec was built with (None when not given), without a warning."""
    return getattr(spec, "_legacy_query_tokens", None)


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
