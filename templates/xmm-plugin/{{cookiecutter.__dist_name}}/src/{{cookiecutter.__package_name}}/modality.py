"""The `{{ cookiecutter.modality }}` modality: its placeholder, how raw input is loaded and validated, its defaults.

``load_{{ cookiecutter.modality }}`` turns a path, raw bytes or an in-memory array into a 1-D float32 signal, the item the
encoder's ``preprocess`` takes. It is the starting point to replace: decode your real file format here and keep
raising :class:`xmm.errors.MediaError` subclasses that name the input and the problem.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError
from xmm.modality import ModalitySpec

NAME = "{{ cookiecutter.modality }}"
PLACEHOLDER = "{{ cookiecutter.placeholder }}"
FILE_EXTENSIONS: tuple[str, ...] = tuple(e for e in "{{ cookiecutter.__extensions }}".split(",") if e)
ENCODER_NAME = "{{ cookiecutter.__encoder_name }}"
MAX_BYTES = 64 * 1024 * 1024  # refuse inputs larger than this before reading them

_NPY_MAGIC = b"\x93NUMPY"
_TEXT_SUFFIXES = {".txt", ".csv", ".tsv"}


def load_{{ cookiecutter.modality }}(raw: Any) -> np.ndarray:
    """Path, bytes, or array-like -> 1-D float32 signal ``[N]``.

    ``.npy`` files (and bytes starting with the NumPy magic) are read with ``np.load``; ``.txt``/``.csv``/``.tsv``
    (and UTF-8 bytes) are parsed as numbers separated by commas or whitespace; anything else is read as raw bytes
    scaled to ``[0, 1]``.
    """
    if isinstance(raw, (str, Path)):
        signal = _load_path(Path(raw))
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        signal = _from_bytes(bytes(raw), suffix=None, source=raw)
    else:
        try:
            signal = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise MediaError(f"cannot use a {type(raw).__name__} as a signal: {e}", source=raw, modality=NAME) from e
    return _check(signal.astype(np.float32, copy=False).reshape(-1), source=raw)


def _load_path(path: Path) -> np.ndarray:
    if FILE_EXTENSIONS and path.suffix.lower() not in FILE_EXTENSIONS:
        raise MediaError(f"unsupported file type '{path.suffix}'; expected one of {', '.join(FILE_EXTENSIONS)}",
                         source=path, modality=NAME)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise MediaTooLargeError(f"{size} bytes exceeds the limit of {MAX_BYTES}", source=path, modality=NAME)
        data = path.read_bytes()
    except OSError as e:
        raise MediaError(f"cannot read file: {e.strerror or e}", source=path, modality=NAME) from e
    return _from_bytes(data, suffix=path.suffix.lower(), source=path)


def _from_bytes(data: bytes, *, suffix: str | None, source: Any) -> np.ndarray:
    if not data:
        raise EmptyMediaError("the input is empty", source=source, modality=NAME)
    if suffix == ".npy" or (suffix is None and data.startswith(_NPY_MAGIC)):
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptMediaError(f"not a readable .npy array: {e}", source=source, modality=NAME) from e
    if suffix in _TEXT_SUFFIXES or suffix is None:
        try:
            return _parse_numbers(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            if suffix is not None:
                raise CorruptMediaError(f"expected numbers separated by commas or whitespace: {e}",
                                        source=source, modality=NAME) from e
    # any other format: the raw bytes are the signal until a real decoder replaces this
    return np.frombuffer(data, dtype=np.uint8).astype(np.float32) / 255.0


def _parse_numbers(text: str) -> np.ndarray:
    tokens = text.replace(",", " ").replace("\t", " ").split()
    return np.array([float(t) for t in tokens], dtype=np.float32)


def _check(signal: np.ndarray, *, source: Any) -> np.ndarray:
    if signal.size == 0:
        raise EmptyMediaError("the input holds no values", source=source, modality=NAME)
    if not np.isfinite(signal).all():
        raise CorruptMediaError("the input holds NaN or infinite values", source=source, modality=NAME)
    return signal


MODALITY = ModalitySpec(
    name=NAME,
    placeholder=PLACEHOLDER,
    load=load_{{ cookiecutter.modality }},
    default_encoder=ENCODER_NAME,
    default_bridge="{{ cookiecutter.default_bridge }}",
    num_query_tokens=8,
    file_extensions=FILE_EXTENSIONS,
    description="{{ cookiecutter.description }}",
)
