"""Speech data scripts: the sentence grammar, espeak-ng synthesis, LibriVox and alsa-utils manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from xmm.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from xmm_plugin_audio.io import load_audio
from xmm_plugin_speech import synthetic
from xmm_plugin_speech.synthetic import (
    ALSA_SOUNDS,
    LIBRIVOX_DIR,
    alsa_words_manifest,
    builtin_prose,
    digit_strings,
    espeak_binary,
    generate_sentences,
    librivox_manifest,
    make_speech_dataset,
    read_sphinx_transcription,
    sentences_from_text,
    speaker_split,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing (scripts/system-deps.sh installs it)")


def test_sentence_grammar_and_prose() -> None:
    a, b = generate_sentences(50, 1), generate_sentences(50, 2)
    assert a == generate_sentences(50, 1) and a != b
    assert len(set(a)) > 45 and all(s == s.lower() and s.replace(" ", "").isalpha() for s in a)
    assert any(s.split()[0] in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} for s in a)
    digits = digit_strings(20, 0)
    assert digits == digit_strings(20, 0) and all(2 <= len(d.split()) <= 4 for d in digits)
    assert set(" ".join(digits).split()) <= {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    prose = "It was a dark and stormy night. The rain fell in torrents, except at occasional intervals!"
    assert sentences_from_text(prose) == ["it was a dark and stormy night", "the rain fell in torrents except at occasional intervals"]


@needs_espeak
def test_espeak_dataset(tmp_path: Path) -> None:
    manifest = make_speech_dataset(tmp_path, 4, seed=5, split_name="test", speeds=(120, 200))
    lines = [json.loads(s) for s in manifest.read_text().splitlines()]
    assert len(lines) == 4
    prompt, speech = lines[0]["messages"][0]["content"]
    assert speech["type"] == "speech" and prompt["text"] == "Transcribe the speech: "
    assert lines[0]["messages"][1]["content"][0]["text"] == lines[0]["meta"]["transcript"] == generate_sentences(4, 5)[0]
    durations = {}
    for line in lines:
        clip = load_audio(tmp_path / line["messages"][0]["content"][1]["path"])
        assert clip.sample_rate == 16000 and 0.5 < clip.duration < 6
        durations[line["meta"]["speed"]] = clip.duration / len(line["meta"]["transcript"])
    assert len({line["meta"]["voice"] for line in lines}) > 1
    if len(durations) == 2:  # faster speech is shorter per character
        assert durations[200] < durations[120]


def test_held_out_speakers_are_disjoint_from_training_ones() -> None:
    train, test = speaker_split()
    assert len(train) == 16 and len(test) == 9 and not set(train) & set(test)
    assert all(s.startswith("en-gb-scotland") or s.endswith("+f2") for s in test)
    assert not any(s.startswith("en-gb-scotland") or s.endswith("+f2") for s in train)


def test_builtin_prose_is_lowercase_word_chunks_without_repeats() -> None:
    prose = builtin_prose()
    assert len(prose) > 1000 and len(set(prose)) == len(prose)
    assert all(4 <= len(c.split()) <= 12 and c == c.lower() for c in prose)


@needs_espeak
def test_a_speaker_list_replaces_the_voice_draw(tmp_path: Path) -> None:
    _, test = speaker_split()
    manifest = make_speech_dataset(tmp_path, 6, seed=3, split_name="held", speakers=test, sentences=["one two three"])
    assert {json.loads(s)["meta"]["voice"] for s in manifest.read_text().splitlines()} <= set(test)
    with pytest.raises(ConfigError, match="speakers"):
        make_speech_dataset(tmp_path, 1, seed=3, speakers=[])


def test_espeak_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="apt-get install espeak-ng"):
        espeak_binary(install=False)
    with pytest.raises(ConfigError, match="n must be"):
        make_speech_dataset("/nonexistent", 0, 0)


def test_sphinx_transcription_parsing(tmp_path: Path) -> None:
    f = tmp_path / "transcription"
    f.write_text("<s> hello there </s> (utt-1)\nbad line\n<s>  general   kenobi </s> (utt-2)\n")
    assert read_sphinx_transcription(f) == {"utt-1": "hello there", "utt-2": "general kenobi"}
    with pytest.raises(ModelNotFoundError, match="pocketsphinx-testdata"):
        read_sphinx_transcription(tmp_path / "missing")


@pytest.mark.skipif(not (LIBRIVOX_DIR / "transcription").exists(), reason="pocketsphinx-testdata missing")
def test_librivox_manifest(tmp_path: Path) -> None:
    lines = [json.loads(s) for s in librivox_manifest(tmp_path).read_text().splitlines()]
    assert len(lines) == 5
    by_id = {x["meta"]["utterance"]: x for x in lines}
    assert by_id["sense_and_sensibility_01_austen_64kb-0880"]["messages"][1]["content"][0]["text"] == "he was not an ill disposed young man"
    clip = load_audio(tmp_path / by_id["sense_and_sensibility_01_austen_64kb-0880"]["messages"][0]["content"][1]["path"])
    assert clip.sample_rate == 16000 and clip.duration == pytest.approx(2.99, abs=0.01)


@pytest.mark.skipif(not ALSA_SOUNDS.is_dir(), reason="alsa-utils sounds missing")
def test_alsa_words_manifest(tmp_path: Path) -> None:
    lines = [json.loads(s) for s in alsa_words_manifest(tmp_path).read_text().splitlines()]
    texts = {x["messages"][1]["content"][0]["text"] for x in lines}
    assert "front center" in texts and "noise" not in texts
