"""A synthetic sound-event dataset with known one-word answers, and real clips from ``alsa-utils`` for smoke tests.

Four question types, each answered by one word:

- ``contour``: "Is the tone rising, falling or steady?" -> rising / falling / steady (log sweeps over >= 1 octave)
- ``count``: "How many beeps are there?" -> one / two / three / four
- ``register``: "Is the pitch high or low?" -> high (880-1760 Hz) / low (110-220 Hz)
- ``source``: "Is it a tone or noise?" -> tone / noise (white or band-limited)

Every clip gets a random level, short fades and faint background noise, so the answers must come from the sound,
not from file-level artefacts. Files are 16 kHz 16-bit WAV; the manifest is the trainer's JSONL chat format with the
audio path relative to it and a ``meta`` record of the task and the generating parameters.

CLI: ``python -m xmm_plugin_audio.synthetic OUT_DIR --n 400 --seed 0 --split train`` (and ``--alsa`` for the real clips).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import ConfigError, ModelNotFoundError
from xmm.io import atomic_write, atomic_write_text
from xmm.progress import Progress

RATE = 16000
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")

QUESTIONS = {
    "contour": "Is the tone rising, falling or steady?",
    "count": "How many beeps are there?",
    "register": "Is the pitch high or low?",
    "source": "Is it a tone or noise?",
}
ANSWERS = {
    "contour": ("rising", "falling", "steady"),
    "count": ("one", "two", "three", "four"),
    "register": ("high", "low"),
    "source": ("tone", "noise"),
}
TASKS = tuple(QUESTIONS)


# -- signal building blocks -------------------------------------------------------------------------------------------
def sweep(f0: float, f1: float, seconds: float, rate: int = RATE) -> np.ndarray:
    """Sine whose frequency moves exponentially from ``f0`` to ``f1`` Hz (a steady tone when equal) -> ``[N]``."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    if abs(f1 - f0) < 1e-9:
        phase = 2 * np.pi * f0 * t
    else:
        k = np.log(f1 / f0) / seconds
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    return np.sin(phase)


def fade(x: np.ndarray, ms: float = 10.0, rate: int = RATE) -> np.ndarray:
    """Raised-cosine fade in and out (no clicks at the edges)."""
    n = min(len(x) // 2, round(ms * rate / 1000))
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _finish(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random level (-20..-3 dBFS peak) plus background noise 30-45 dB below it."""
    peak = 10 ** (rng.uniform(-20, -3) / 20)
    x = x / max(np.abs(x).max(), 1e-9) * peak
    noise = rng.standard_normal(len(x)) * peak * 10 ** (-rng.uniform(30, 45) / 20)
    return np.clip(x + noise, -1, 1).astype(np.float32)


def make_contour(answer: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    seconds = rng.uniform(1.0, 2.0)
    low = rng.uniform(200, 500)
    high = low * rng.uniform(2.0, 3.0)  # at least an octave, so the contour is unambiguous
    f0, f1 = {"rising": (low, high), "falling": (high, low)}.get(answer, (low * 1.5, low * 1.5))
    x = fade(sweep(f0, f1, seconds))
    return x, {"f0": round(f0, 1), "f1": round(f1, 1), "seconds": round(seconds, 3)}


def make_count(answer: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    count = ANSWERS["count"].index(answer) + 1
    freq = rng.uniform(500, 1500)
    parts = [np.zeros(round(rng.uniform(0.05, 0.2) * RATE))]
    for i in range(count):
        parts.append(fade(sweep(freq, freq, rng.uniform(0.1, 0.2)), ms=5))
        gap = rng.uniform(0.15, 0.3) if i < count - 1 else rng.uniform(0.05, 0.2)
        parts.append(np.zeros(round(gap * RATE)))
    return np.concatenate(parts), {"count": count, "freq": round(freq, 1)}


def make_register(answer: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    freq = rng.uniform(880, 1760) if answer == "high" else rng.uniform(110, 220)
    seconds = rng.uniform(0.8, 1.5)
    return fade(sweep(freq, freq, seconds)), {"freq": round(freq, 1), "seconds": round(seconds, 3)}


def make_source(answer: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    seconds = rng.uniform(0.8, 1.5)
    if answer == "noise":
        x = rng.standard_normal(round(seconds * RATE))
        params: dict[str, Any] = {"noise": "white", "seconds": round(seconds, 3)}
        if rng.random() < 0.5:  # half of the bursts are band-limited (two octaves wide), so noise is not only hiss
            lo = rng.uniform(200, 1500)
            spec = np.fft.rfft(x)
            hz = np.fft.rfftfreq(len(x), 1 / RATE)
            spec[(hz < lo) | (hz > 4 * lo)] = 0
            x = np.fft.irfft(spec, len(x))
            params.update(noise="band", band=[round(lo, 1), round(4 * lo, 1)])
        return fade(x), params
    freq = rng.uniform(200, 1500)
    return fade(sweep(freq, freq, seconds)), {"freq": round(freq, 1), "seconds": round(seconds, 3)}


MAKERS: dict[str, Callable[[str, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]] = {
    "contour": make_contour,
    "count": make_count,
    "register": make_register,
    "source": make_source,
}


def make_example(task: str, answer: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """One clip ``[N]`` float32 at 16 kHz for ``task`` whose correct answer is ``answer``, and its parameters."""
    if task not in MAKERS:
        raise ConfigError(f"unknown task {task!r}; known: {list(MAKERS)}", field="tasks")
    if answer not in ANSWERS[task]:
        raise ConfigError(f"{answer!r} is not an answer of {task!r}: {ANSWERS[task]}", field="answer")
    x, params = MAKERS[task](answer, rng)
    return _finish(x, rng), params


# -- datasets ---------------------------------------------------------------------------------------------------------
def make_audio_dataset(
    out_dir: str | Path, n: int, seed: int, split_name: str = "train", *, tasks: Sequence[str] = TASKS
) -> Path:
    """Write ``n`` WAV clips under ``out_dir/split_name/`` and ``out_dir/split_name.jsonl``; returns the manifest path.

    Tasks and answers are balanced (round robin); use different seeds for train and test splits.
    """
    import soundfile as sf

    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}", field="n")
    unknown = [t for t in tasks if t not in MAKERS]
    if unknown or not tasks:
        raise ConfigError(f"unknown tasks {unknown}; known: {list(MAKERS)}", field="tasks")
    out_dir = Path(out_dir)
    (out_dir / split_name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    bar = Progress(n, desc=f"data audio {split_name}", unit="clip")
    for i in range(n):
        task = tasks[i % len(tasks)]
        answers = ANSWERS[task]
        answer = answers[(i // len(tasks)) % len(answers)]
        x, params = make_example(task, answer, rng)
        rel = f"{split_name}/{i:05d}.wav"
        atomic_write(out_dir / rel, lambda p, x=x: sf.write(str(p), x, RATE, subtype="PCM_16", format="WAV"))
        lines.append(_example(rel, QUESTIONS[task], answer, {"task": task, "answer": answer, **params}))
        bar.update(1)
    bar.close()
    manifest = out_dir / f"{split_name}.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def alsa_manifest(out_dir: str | Path, *, sounds_dir: str | Path = ALSA_SOUNDS) -> Path:
    """Copy the real clips of ``alsa-utils`` (48 kHz spoken channel names and a noise clip) into ``out_dir/alsa/``
    and write ``out_dir/alsa.jsonl`` asking "Is it speech or noise?"; returns the manifest path."""
    sounds_dir = Path(sounds_dir)
    wavs = sorted(sounds_dir.glob("*.wav"))
    if not wavs:
        raise ModelNotFoundError(f"no WAV files in {sounds_dir}; install them with: sudo apt-get install alsa-utils")
    out_dir = Path(out_dir)
    (out_dir / "alsa").mkdir(parents=True, exist_ok=True)
    lines = []
    for wav in wavs:
        rel = f"alsa/{wav.name}"
        shutil.copyfile(wav, out_dir / rel)
        label = "noise" if wav.stem.lower() == "noise" else "speech"
        words = "" if label == "noise" else wav.stem.replace("_", " ").lower()
        lines.append(_example(rel, "Is it speech or noise?", label, {"source": "alsa-utils", "label": label, "words": words}))
    manifest = out_dir / "alsa.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _example(path: str, question: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "audio", "path": path}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "meta": meta,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xmm_plugin_audio.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=400, help="number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="split name (file prefix)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--alsa", action="store_true", help="also copy the alsa-utils clips and write alsa.jsonl")
    args = parser.parse_args(argv)
    print(make_audio_dataset(args.out_dir, args.n, args.seed, args.split, tasks=[t for t in args.tasks.split(",") if t]))
    if args.alsa:
        print(alsa_manifest(args.out_dir))


if __name__ == "__main__":
    main()
