"""Speech data: espeak-ng utterances with known transcripts, and the real LibriVox utterances of Debian's
``pocketsphinx-testdata`` (and the spoken words of ``alsa-utils``) for evaluation.

The synthetic set reads short generated sentences and digit strings with several espeak-ng voices (accents, male and
female variants) at several speeds, resampled to 16 kHz. Every example asks for a transcript ("Transcribe the
speech.") and answers with the lowercase words, in the trainer's JSONL chat format; ``meta`` records voice, speed
and transcript. espeak-ng is installed with apt-get when missing and possible, otherwise a clear error says how.

CLI: ``python -m xmm_plugin_speech.synthetic OUT_DIR --n 400 --seed 0 --split train [--librivox] [--alsa]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from xmm.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

RATE = 16000
# The instruction comes before the speech: given a transcript as text, frozen SmolLM2-135M-Instruct copies it far
# more faithfully after "Transcribe the speech: " than before "Transcribe the speech." (README "Measured").
PROMPTS = ("Transcribe the speech:", "Write down what is said:", "Transcribe this recording:")
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")
VARIANTS = ("", "+m3", "+f3", "+m1", "+f2")
SPEEDS = (130, 145, 160, 175, 190)  # words per minute
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")

# a small generative grammar: enough variety that a bridge has to transcribe, not memorise sentences
_WORDS = {
    "name": "anna ben clara david emma frank grace henry iris jack laura mark nora oscar paul rose sam tom vera will",
    "noun": "apple bird boat book box bread car cat chair child city cloud coat cup dog door dream field fire fish "
            "flower friend garden glass hand hat horse house island key lamp letter light market money moon morning "
            "mountain music night ocean paper pen picture plate rain river road room school sea ship shoe song star "
            "stone street sun table teacher tree train village wall water window winter wood world",
    "adj": "big small old new red blue green yellow black white happy sad quiet loud warm cold bright dark heavy "
           "light long short fast slow early late clean empty full kind strange simple gentle proud",
    "past": "saw found took made gave left kept bought sold built carried opened closed painted washed watched "
            "moved pushed pulled lost brought held wanted liked needed followed",
    "verb": "see find take make give leave keep buy sell build carry open close paint wash watch move push pull "
            "bring hold follow read write",
    "prep": "near behind under above beside inside across along past toward",
    "time": "today,tomorrow,yesterday,tonight,this morning,every evening,after dinner,before noon,again",
    "modal": "will can should must might could would",
    "pron": "he she we they you i",
    "digit": "zero one two three four five six seven eight nine",
}
_TEMPLATES = (
    "the {adj} {noun} is {prep} the {noun}",
    "{name} {past} the {adj} {noun}",
    "{pron} {modal} {verb} the {noun} {time}",
    "{name} and {name} {past} a {noun} {prep} the {noun}",
    "please {verb} the {adj} {noun}",
    "the {noun} was {adj} and the {noun} was {adj}",
    "{pron} {past} {name} a {adj} {noun} {time}",
    "where is the {adj} {noun}",
    "{name} said the {noun} is {adj}",
    "{digits}",
)


def speaker_split(held_out_voice: str = "en-gb-scotland", held_out_variant: str = "+f2") -> tuple[list[str], list[str]]:
    """espeak-ng speakers (voice + variant) for training and for held-out tests, disjoint: every speaker with the
    held-out accent or the held-out variant is kept for testing (16 training, 9 held-out speakers by default)."""
    every = [f"{v}{x}" for v in VOICES for x in VARIANTS]
    test = [s for s in every if s.startswith(held_out_voice) or (held_out_variant and s.endswith(held_out_variant))]
    return [s for s in every if s not in test], test


def generate_sentences(n: int, seed: int) -> list[str]:
    """``n`` lowercase sentences from the built-in grammar (about 1 in 10 is a 3-7 digit string)."""
    rng = np.random.default_rng(seed)
    words = {k: v.split(",") if "," in v else v.split() for k, v in _WORDS.items()}
    out = []
    for _ in range(n):
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        if template == "{digits}":
            out.append(" ".join(rng.choice(words["digit"], size=int(rng.integers(3, 8)))))
            continue
        out.append(re.sub(r"\{(\w+)\}", lambda m: str(rng.choice(words[m.group(1)])), template))
    return out


def digit_strings(n: int, seed: int, *, min_digits: int = 2, max_digits: int = 4) -> list[str]:
    """``n`` spoken digit strings ("four zero seven"): a small-vocabulary recognition task."""
    rng = np.random.default_rng(seed)
    digits = _WORDS["digit"].split()
    return [" ".join(rng.choice(digits, size=int(rng.integers(min_digits, max_digits + 1)))) for _ in range(n)]


def sentences_from_text(text: str, *, min_words: int = 4, max_words: int = 12) -> list[str]:
    """Cut prose into lowercase word chunks (at sentence ends, and every ``max_words`` words) for extra variety."""
    chunks = []
    for sentence in re.split(r"[.!?;:\n]\s*", text):
        words = re.findall(r"[a-z]+(?:'[a-z]+)?", sentence.lower())
        for i in range(0, len(words), max_words):
            piece = words[i : i + max_words]
            if len(piece) >= min_words:
                chunks.append(" ".join(piece))
    return chunks


LICENSE_DIR = Path("/usr/share/common-licenses")
LICENSE_FILES = ("GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-3", "GFDL-1.3", "Artistic")


def builtin_prose(*, license_dir: str | Path = LICENSE_DIR) -> list[str]:
    """Word chunks (4-12 words, lowercase) of English prose that every machine of this kind has: Python's own
    reference documentation (``pydoc_data.topics``) and the Debian licence texts that exist. Wider vocabulary than
    the grammar, so a recogniser learns sub-word tokens rather than a closed word list."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    texts += [(Path(license_dir) / f).read_text(errors="ignore") for f in LICENSE_FILES if (Path(license_dir) / f).exists()]
    seen: set[str] = set()
    out = []
    for chunk in (c for t in texts for c in sentences_from_text(t)):
        if chunk not in seen:
            seen.add(chunk)
            out.append(chunk)
    return out


def espeak_binary(*, install: bool = True) -> str:
    """Path of ``espeak-ng``; installs the Debian package with apt-get when missing (as root), else raises."""
    found = shutil.which("espeak-ng")
    if found:
        return found
    if install and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        log.warning("espeak-ng is missing; installing it with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "espeak-ng"], check=False, env=env, capture_output=True)
        found = shutil.which("espeak-ng")
        if found:
            return found
    raise MissingDependencyError("espeak-ng", command="sudo apt-get install espeak-ng", purpose="synthesising the speech dataset")


def synthesize(text: str, voice: str = "en-us", speed: int = 160, *, binary: str | None = None) -> np.ndarray:
    """Speak ``text`` with espeak-ng -> mono float32 ``[N]`` at 16 kHz (resampled with soxr)."""
    import soundfile as sf
    from xmm_plugin_audio.io import resample

    binary = binary or espeak_binary()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        res = subprocess.run([binary, "-v", voice, "-s", str(speed), "-w", str(wav), text], capture_output=True, text=True)
        if res.returncode != 0 or not wav.exists():
            raise ConfigError(f"espeak-ng failed for voice {voice!r}: {res.stderr.strip() or res.returncode}", field="voice")
        x, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    return resample(x.mean(axis=1), rate, RATE)


def make_speech_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    split_name: str = "train",
    *,
    voices: Sequence[str] = VOICES,
    variants: Sequence[str] = VARIANTS,
    speeds: Sequence[int] = SPEEDS,
    sentences: Sequence[str] | None = None,
    speakers: Sequence[str] | None = None,
) -> Path:
    """Synthesise ``n`` utterances into ``out_dir/split_name/`` and write ``out_dir/split_name.jsonl``; returns it.

    ``sentences`` (default: :func:`generate_sentences` with ``seed``) are drawn in order, cycling; voice, variant and
    speed are drawn at random per utterance. Use different seeds for train and test splits. ``speakers`` (full voice
    names such as ``"en-gb+f3"``, see :func:`speaker_split`) replaces the voice x variant draw.
    """
    import soundfile as sf

    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}", field="n")
    if speakers is not None and not speakers:
        raise ConfigError("speakers is empty", field="speakers")
    if not voices or not speeds:
        raise ConfigError("need at least one voice and one speed", field="voices")
    binary = espeak_binary()
    texts = list(sentences) if sentences is not None else generate_sentences(n, seed)
    if not texts:
        raise ConfigError("no sentences to speak", field="sentences")
    rng = np.random.default_rng(seed + 7919)  # not the sentence stream, so voices are independent of the text
    out_dir = Path(out_dir)
    (out_dir / split_name).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        text = texts[i % len(texts)]
        if speakers is not None:
            voice = str(speakers[rng.integers(len(speakers))])
        else:
            voice = f"{voices[rng.integers(len(voices))]}{variants[rng.integers(len(variants))] if variants else ''}"
        speed = int(speeds[rng.integers(len(speeds))])
        x = synthesize(text, voice, speed, binary=binary)
        rel = f"{split_name}/{i:05d}.wav"
        atomic_write(out_dir / rel, lambda p, x=x: sf.write(str(p), x, RATE, subtype="PCM_16", format="WAV"))
        prompt = PROMPTS[i % len(PROMPTS)]
        lines.append(_example(rel, prompt, text, {"voice": voice, "speed": speed, "transcript": text, "source": "espeak-ng"}))
    manifest = out_dir / f"{split_name}.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def librivox_manifest(out_dir: str | Path, *, source_dir: str | Path = LIBRIVOX_DIR, prompt: str = PROMPTS[0]) -> Path:
    """Copy the LibriVox utterances of ``pocketsphinx-testdata`` into ``out_dir/librivox/`` with their transcripts
    (from the package's ``transcription`` file) and write ``out_dir/librivox.jsonl``; returns the manifest path."""
    source_dir = Path(source_dir)
    transcripts = read_sphinx_transcription(source_dir / "transcription")
    out_dir = Path(out_dir)
    (out_dir / "librivox").mkdir(parents=True, exist_ok=True)
    lines = []
    for utt, text in transcripts.items():
        wav = source_dir / f"{utt}.wav"
        if not wav.exists():
            raise ModelNotFoundError(f"{wav} is listed in the transcription but missing; reinstall pocketsphinx-testdata")
        shutil.copyfile(wav, out_dir / "librivox" / wav.name)
        lines.append(_example(f"librivox/{wav.name}", prompt, text, {"utterance": utt, "transcript": text, "source": "librivox"}))
    manifest = out_dir / "librivox.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def read_sphinx_transcription(path: str | Path) -> dict[str, str]:
    """Parse a Sphinx ``transcription`` file (``<s> words </s> (utterance-id)`` per line) -> ``{id: words}``."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} not found; install the LibriVox test utterances with: sudo apt-get install pocketsphinx-testdata")
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if m:
            out[m.group(2).strip()] = " ".join(m.group(1).split())
    if not out:
        raise ModelNotFoundError(f"{path} holds no '<s> words </s> (id)' lines")
    return out


def alsa_words_manifest(out_dir: str | Path, *, sounds_dir: str | Path = ALSA_SOUNDS) -> Path:
    """The spoken channel names of ``alsa-utils`` (48 kHz, e.g. "front center") as a tiny real-speech manifest."""
    sounds_dir = Path(sounds_dir)
    wavs = [w for w in sorted(sounds_dir.glob("*.wav")) if w.stem.lower() != "noise"]
    if not wavs:
        raise ModelNotFoundError(f"no spoken WAV files in {sounds_dir}; install them with: sudo apt-get install alsa-utils")
    out_dir = Path(out_dir)
    (out_dir / "alsa").mkdir(parents=True, exist_ok=True)
    lines = []
    for wav in wavs:
        shutil.copyfile(wav, out_dir / "alsa" / wav.name)
        text = wav.stem.replace("_", " ").lower()
        lines.append(_example(f"alsa/{wav.name}", PROMPTS[0], text, {"transcript": text, "source": "alsa-utils"}))
    manifest = out_dir / "alsa_words.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _example(path: str, prompt: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": prompt + " "}, {"type": "speech", "path": path}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "meta": meta,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xmm_plugin_speech.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=400, help="number of utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="split name (file prefix)")
    parser.add_argument("--text", type=Path, action="append", default=[], help="also read sentences from this prose file")
    parser.add_argument("--prose", action="store_true", help="also read sentences from the built-in prose (builtin_prose)")
    parser.add_argument("--speakers", choices=("all", "train", "test"), default="all",
                        help="espeak-ng speakers: all, or the training / held-out side of speaker_split()")
    parser.add_argument("--digits", action="store_true", help="digit strings only (2-4 digits), a small-vocabulary task")
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        help="skip sentences whose transcript is in this manifest (keeps a test split held out)")
    parser.add_argument("--librivox", action="store_true", help="also write librivox.jsonl (pocketsphinx-testdata)")
    parser.add_argument("--alsa", action="store_true", help="also write alsa_words.jsonl (alsa-utils)")
    args = parser.parse_args(argv)
    seen = {json.loads(line)["meta"]["transcript"] for m in args.exclude for line in m.read_text().splitlines() if line.strip()}
    # draw extra candidates so that excluded ones can be dropped and still leave n
    make = digit_strings if args.digits else generate_sentences
    generated = [x for x in make(2 * args.n + len(seen), args.seed) if x not in seen]
    if (args.text or args.prose) and not args.digits:
        prose = [x for p in args.text for x in sentences_from_text(p.read_text(errors="ignore")) if x not in seen]
        prose += [x for x in builtin_prose() if x not in seen] if args.prose else []
        rng = np.random.default_rng(args.seed)
        # half grammar, half prose, shuffled
        prose = [prose[i] for i in rng.permutation(len(prose))[: args.n // 2]]
        sentences = generated[: args.n - len(prose)] + prose
        sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    else:
        sentences = generated[: args.n]
    speakers = None if args.speakers == "all" else speaker_split()[0 if args.speakers == "train" else 1]
    print(make_speech_dataset(args.out_dir, args.n, args.seed, args.split, sentences=sentences, speakers=speakers))
    if args.librivox:
        print(librivox_manifest(args.out_dir))
    if args.alsa:
        print(alsa_words_manifest(args.out_dir))


if __name__ == "__main__":
    main()
