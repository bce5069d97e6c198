"""The speech plugin's ``xmm demo`` task: transcribing espeak-ng sentences (scored by word error rate)."""

from __future__ import annotations

from pathlib import Path

from xmm.recipes import DemoData, DemoSize, DemoTask


def make_data(out_dir: Path, *, n_train: int, n_test: int, train_seed: int, test_seed: int) -> DemoData:
    """Grammar sentences spoken by espeak-ng; held-out sentences are ones training never heard, spoken by speakers
    (accent + voice variant) training never heard."""
    from xmm_plugin_speech import synthetic

    train_speakers, test_speakers = synthetic.speaker_split()
    train_text = synthetic.generate_sentences(n_train, train_seed)
    seen = set(train_text)
    # short digit strings and templates can repeat, so draw more held-out sentences than needed and drop heard ones
    test_text = [s for s in synthetic.generate_sentences(2 * n_test + len(seen), test_seed) if s not in seen]
    train = synthetic.make_speech_dataset(out_dir, n_train, train_seed, "train", sentences=train_text,
                                          speakers=train_speakers)
    test = synthetic.make_speech_dataset(out_dir, n_test, test_seed, "test", sentences=test_text[:n_test],
                                         speakers=test_speakers)
    return DemoData(train=train, test=test)


SPEECH_TASK = DemoTask(
    modality="speech",
    title="espeak-ng sentences: transcription",
    recipe="speech",
    make=make_data,
    metric="wer",
    sizes={
        "quick": DemoSize(n_train=32, n_test=8, steps={"convert": 4, "align": 6}),
        # the convert stage runs no LLM layer, so more utterances cost only their (cached) encoding
        "default": DemoSize(n_train=1200, n_test=100),
    },
    default=False,
    order=50,
    max_new_tokens=32,
)

DEMO_TASKS = {"speech-espeak": SPEECH_TASK}
