"""The xmm error hierarchy.

Every error that xmm raises on purpose derives from :class:`XmmError`, so callers can catch one type. Errors about a
file or an input name it (``source``) and say what is wrong, so the message alone is enough to fix the problem.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any


class XmmError(Exception):
    """Base class of every error xmm raises on purpose."""


class ConfigError(XmmError, ValueError):
    """A user-written config (YAML, dict, keyword arguments) is invalid; the message names the field."""

    def __init__(self, message: str, *, field: str | None = None, source: str | Path | None = None) -> None:
        self.field = field
        self.source = str(source) if source is not None else None
        where = ""
        if self.source:
            where += f"{self.source}: "
        if field:
            where += f"field '{field}': "
        super().__init__(f"{where}{message}")


class MissingDependencyError(XmmError, ImportError):
    """An optional dependency is not installed; the message names the extra or the exact install command."""

    def __init__(self, package: str, *, extra: str | None = None, command: str | None = None, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        if command is None:
            command = f"pip install 'xmm-core[{extra}]'" if extra else f"pip install {package}"
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"'{package}' is not installed{why}. Install it with: {command}")


def import_optional(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import the optional dependency ``module`` (e.g. ``"matplotlib.pyplot"``), or raise
    :class:`MissingDependencyError` naming ``package`` (default: the top-level module) and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module != e.name and not module.startswith(e.name + "."):
            raise  # installed, but one of its own dependencies is missing: the original error says which
        raise MissingDependencyError(package or module.split(".")[0], extra=extra, purpose=purpose) from e


class PluginError(XmmError):
    """A plugin failed to load, or registered a name that is already taken (raised only in strict mode)."""


class RegistryError(XmmError, KeyError):
    """A modality, encoder, bridge, decoder or projector name is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MediaError(XmmError, ValueError):
    """A media input (file, bytes or object) cannot be used; the message names the input and the problem."""

    def __init__(self, message: str, *, source: Any = None, modality: str | None = None) -> None:
        self.source = _describe_source(source)
        self.modality = modality
        prefix = f"{modality} " if modality else ""
        where = f"{prefix}input {self.source}: " if self.source else (f"{prefix}input: " if prefix else "")
        super().__init__(f"{where}{message}")


class CorruptMediaError(MediaError):
    """The input could not be decoded (corrupt, truncated or not of the expected kind)."""


class EmptyMediaError(MediaError):
    """The input decodes but holds nothing usable (no frames, no samples, only silence)."""


class MediaTooLargeError(MediaError):
    """The input exceeds a configured limit (pixels, duration, bytes)."""


class SchemaError(MediaError):
    """Structured input (e.g. device telemetry) fails its schema; the message points at the field."""


class UnsafePathError(MediaError):
    """A path leaves the folder it must stay in (a dataset's media root, a checkpoint), or is a URL; it is refused
    without being opened. ``detail`` is the message without the input prefix; ``kind`` the bad-sample category."""

    kind = "unsafe_path"

    def __init__(self, message: str, *, source: Any = None, modality: str | None = None) -> None:
        self.detail = message
        super().__init__(message, source=source, modality=modality)


class ShapeError(XmmError, ValueError):
    """A tensor has the wrong shape; the message names the expected shape."""


class PromptError(XmmError, ValueError):
    """The chat messages and the media do not match (a placeholder without media, media without a placeholder...)."""


class ContextLengthError(PromptError):
    """The rendered prompt with its media tokens does not fit the LLM's context."""


class CheckpointError(XmmError):
    """A checkpoint cannot be written or read."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint was made for another LLM, encoder or plugin set; the message says what it expects."""


class StorageError(XmmError, OSError):
    """Writing or reading failed because of the environment (disk full, read-only folder, a file where a folder is
    expected, no permission); the message names the path and the problem."""


class ModelNotFoundError(XmmError):
    """A model (LLM, encoder weights) could not be located; the message says how to get it."""


class TrainingError(XmmError):
    """Training cannot proceed (e.g. a bad sample with ``on_bad_sample: fail``)."""


def _describe_source(source: Any) -> str | None:
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        return f"'{source}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"
