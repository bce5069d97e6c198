"""Reading and validating audio, shared by the ``audio`` and ``speech`` modalities.

Files and bytes are decoded with ``soundfile`` (WAV, FLAC, OGG/Vorbis and whatever else the installed libsndfile
reads), mixed down to mono and checked: empty, NaN/inf-containing, silent-only (configurable) and over-long input
raises a typed :mod:`xmm.errors` error naming the input. Resampling to an encoder's rate uses ``soxr``.

Limits come before the work: a path is ``stat``-ed first (a FIFO, device or folder is named and never opened; a file
over the modality's size limit is refused, ``xmm.limits``), files are decoded as a stream from disk, and the header's
length, rate and channel count are checked (``max_seconds``, ``max_decoded_bytes``) before the samples are read.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError
from xmm.limits import check_file, max_file_bytes

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga")


class AudioLoadConfig(BaseModel):
    """How raw audio is validated when it is loaded."""

    model_config = ConfigDict(extra="forbid")

    max_seconds: float = Field(600.0, gt=0, description="longer input raises MediaTooLargeError")
    reject_silence: bool = Field(True, description="raise EmptyMediaError when the peak is below silence_dbfs")
    silence_dbfs: float = Field(-80.0, lt=0, description="peak level (dB full scale) at or below which input is silent")
    max_decoded_bytes: int = Field(512 << 20, gt=0, description="decoded float32 samples (all channels) larger than "
                                   "this raise MediaTooLargeError, checked from the header before decoding")


@dataclass(frozen=True, eq=False)
class AudioClip:
    """Mono audio: ``samples [N]`` float32 in about [-1, 1] at ``sample_rate`` Hz; ``source`` names the input."""

    samples: np.ndarray
    sample_rate: int
    source: str | None = None

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    def resampled(self, rate: int) -> AudioClip:
        """This clip at ``rate`` Hz (``soxr`` high quality); the same object when the rate already matches."""
        if rate == self.sample_rate:
            return self
        return AudioClip(resample(self.samples, self.sample_rate, rate), rate, self.source)

    def fingerprint(self) -> str:
        """sha256 of the samples and rate (the feature-cache key of in-memory audio)."""
        h = hashlib.sha256(f"audio:{self.sample_rate}:".encode())
        h.update(np.ascontiguousarray(self.samples, dtype=np.float32).tobytes())
        return h.hexdigest()


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono ``samples [N]`` from ``rate_in`` to ``rate_out`` Hz with soxr; returns float32 ``[M]``."""
    import soxr

    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), rate_in, rate_out, quality="HQ").astype(np.float32)


def load_audio(raw: Any, config: AudioLoadConfig | None = None, *, modality: str = "audio") -> AudioClip:
    """Load one audio input and validate it; returns mono :class:`AudioClip` at the input's own rate.

    ``raw`` is a path (``str``/``Path``), encoded bytes (a WAV/FLAC/OGG file's content), a binary file object, an
    :class:`AudioClip`, ``(samples, sample_rate)`` or a dict with ``array``/``samples`` and
    ``sampling_rate``/``sample_rate`` (the Hugging Face datasets layout). Sample arrays may be ``[N]`` or
    ``[N, channels]``; integer PCM is scaled to [-1, 1].
    """
    config = config or AudioLoadConfig()
    if isinstance(raw, AudioClip):
        clip = raw
    elif isinstance(raw, (str, os.PathLike)):
        clip = _read_file(Path(raw), config, modality)
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        limit = max_file_bytes(modality)
        if len(raw) > limit:
            raise MediaTooLargeError(f"is {len(raw):,} bytes, over the limit of {limit:,} for {modality} input",
                                     source=raw, modality=modality)
        clip = _decode(io.BytesIO(bytes(raw)), raw, config, modality)
    elif hasattr(raw, "read"):
        clip = _decode(raw, raw, config, modality)
    elif isinstance(raw, tuple) and len(raw) == 2:
        clip = _from_array(raw[0], raw[1], raw, modality)
    elif isinstance(raw, dict):
        samples = raw.get("array", raw.get("samples"))
        rate = raw.get("sampling_rate", raw.get("sample_rate"))
        if samples is None or rate is None:
            raise MediaError(
                f"an audio dict needs 'array' (or 'samples') and 'sampling_rate' (or 'sample_rate'); got keys {sorted(raw)}",
                source=raw,
                modality=modality,
            )
        clip = _from_array(samples, rate, raw, modality)
    else:
        raise MediaError(
            f"cannot read audio from a {type(raw).__name__}; pass a path, bytes, (samples, sample_rate) or an AudioClip",
            source=raw,
            modality=modality,
        )
    validate_audio(clip, config, modality=modality, raw=raw)
    return clip


def validate_audio(clip: AudioClip, config: AudioLoadConfig, *, modality: str = "audio", raw: Any = None) -> None:
    """Raise a typed :class:`MediaError` when ``clip`` is empty, non-finite, too long or (optionally) silent."""
    source = raw if raw is not None else clip.source
    x = clip.samples
    if x.ndim != 1:
        raise MediaError(f"samples must be mono [N], got shape {x.shape}", source=source, modality=modality)
    if x.size == 0:
        raise EmptyMediaError("holds no audio samples (0 frames)", source=source, modality=modality)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise CorruptMediaError(f"contains {bad} NaN or infinite samples", source=source, modality=modality)
    if clip.duration > config.max_seconds:
        raise MediaTooLargeError(
            f"is {clip.duration:.2f} s long; the limit is {config.max_seconds:g} s (max_seconds)", source=source, modality=modality
        )
    if config.reject_silence:
        peak = float(np.abs(x).max())
        level = 20 * math.log10(peak) if peak > 0 else -math.inf
        if level <= config.silence_dbfs:
            shown = "-inf" if level == -math.inf else f"{level:.1f}"
            raise EmptyMediaError(
                f"is silent (peak {shown} dBFS <= {config.silence_dbfs:g} dBFS); set reject_silence=False to allow it",
                source=source,
                modality=modality,
            )


def fingerprint_audio(raw: Any) -> str:
    """Content hash of a raw audio input: file bytes for paths/bytes, sample hash for in-memory audio."""
    from xmm.modality import default_fingerprint

    if isinstance(raw, (str, os.PathLike, bytes, bytearray, memoryview)):
        return default_fingerprint(raw if not isinstance(raw, os.PathLike) else Path(raw))
    return load_audio(raw, AudioLoadConfig(reject_silence=False, max_seconds=math.inf)).fingerprint()


# -- decoding -------------------------------------------------------------------------------------------------------
def _read_file(path: Path, config: AudioLoadConfig, modality: str) -> AudioClip:
    # stat first: a directory, FIFO, device or an over-limit file is refused without being opened
    check_file(path, modality=modality, what="audio file")
    if path.stat().st_size == 0:
        raise EmptyMediaError("file is empty (0 bytes)", source=path, modality=modality)
    return _decode(path, path, config, modality)


def _decode(file: Any, raw: Any, config: AudioLoadConfig, modality: str) -> AudioClip:
    import soundfile as sf

    source = str(raw) if isinstance(raw, (str, os.PathLike)) else None
    try:
        with sf.SoundFile(file) as f:
            rate, frames, channels = f.samplerate, f.frames, f.channels
            if rate <= 0 or channels <= 0:
                raise CorruptMediaError(f"the header says {rate} Hz and {channels} channel(s)", source=raw,
                                        modality=modality)
            # check the length and decoded size from the header before decoding a possibly huge file
            if frames / rate > config.max_seconds:
                raise MediaTooLargeError(
                    f"is {frames / rate:.2f} s long; the limit is {config.max_seconds:g} s (max_seconds)",
                    source=raw,
                    modality=modality,
                )
            if frames * channels * 4 > config.max_decoded_bytes:
                raise MediaTooLargeError(
                    f"would decode to {frames * channels * 4:,} bytes ({frames:,} frames x {channels} channels), over "
                    f"max_decoded_bytes={config.max_decoded_bytes:,}", source=raw, modality=modality)
            data = f.read(dtype="float32", always_2d=True)
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError, MemoryError) as e:
        reason = e.error_string if isinstance(e, sf.LibsndfileError) else type(e).__name__
        raise CorruptMediaError(f"cannot decode audio ({reason}); readable formats are WAV, FLAC and OGG", source=raw,
                                modality=modality) from e
    if data.shape[0] == 0:
        raise EmptyMediaError("holds no audio samples (0 frames)", source=raw, modality=modality)
    return AudioClip(_mixdown(data), int(rate), source)


def _from_array(samples: Any, rate: Any, raw: Any, modality: str) -> AudioClip:
    try:
        rate = int(rate)
    except (TypeError, ValueError) as e:
        raise MediaError(f"sample rate must be an integer, got {rate!r}", source=raw, modality=modality) from e
    if rate <= 0:
        raise MediaError(f"sample rate must be positive, got {rate}", source=raw, modality=modality)
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples)
    if x.dtype.kind in "iu":  # integer PCM: scale to [-1, 1]
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    elif x.dtype.kind != "f":
        raise MediaError(f"samples must be a float or integer array, got dtype {x.dtype}", source=raw, modality=modality)
    if x.ndim == 2:
        # [N, C] as soundfile returns it; a [C, N] array with few channels is transposed (torch convention)
        if x.shape[0] <= 8 < x.shape[1]:
            x = x.T
        x = _mixdown(x.astype(np.float32))
    elif x.ndim != 1:
        raise MediaError(f"samples must be [N] or [N, channels], got shape {x.shape}", source=raw, modality=modality)
    return AudioClip(np.ascontiguousarray(x, dtype=np.float32), rate, None)


def _mixdown(data: np.ndarray) -> np.ndarray:
    """``[N, C]`` -> mono ``[N]`` by averaging the channels."""
    return np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], dtype=np.float32)


class AudioLoader:
    """``ModalitySpec.load`` for audio modalities: :func:`load_audio` with a fixed config and modality name."""

    def __init__(self, config: AudioLoadConfig | None = None, *, modality: str = "audio") -> None:
        self.config = config or AudioLoadConfig()
        self.modality = modality

    def __call__(self, raw: Any) -> AudioClip:
        return load_audio(raw, self.config, modality=self.modality)

    def __repr__(self) -> str:
        return f"AudioLoader({self.modality!r}, {self.config!r})"


def config_from_env(modality: str, default: AudioLoadConfig) -> AudioLoadConfig:
    """``default`` with ``XMM_<MODALITY>_MAX_SECONDS`` / ``XMM_<MODALITY>_REJECT_SILENCE`` applied when set.

    The registry builds the modality specs without user arguments, so these variables are how a command-line user
    changes the load limits (e.g. ``XMM_AUDIO_REJECT_SILENCE=0 xmm chat ...``).
    """
    from xmm.persist import validate_config

    prefix = f"XMM_{modality.upper()}_"
    data = default.model_dump()
    if (v := os.environ.get(prefix + "MAX_SECONDS")) is not None:
        data["max_seconds"] = v
    if (v := os.environ.get(prefix + "REJECT_SILENCE")) is not None:
        data["reject_silence"] = v.strip().lower() not in {"0", "false", "no", "off"}
    if (v := os.environ.get(prefix + "SILENCE_DBFS")) is not None:
        data["silence_dbfs"] = v
    return validate_config(AudioLoadConfig, data, source=f"environment ({prefix}*)")
