"""The audio plugin's ``xmm demo`` task: synthesised tones and noise with contour, beep-count, register and source
questions."""

from __future__ import annotations

from pathlib import Path

from xmm.recipes import DemoData, DemoSize, DemoTask


def make_data(out_dir: Path, *, n_train: int, n_test: int, train_seed: int, test_seed: int) -> DemoData:
    from xmm_plugin_audio import synthetic

    train = synthetic.make_audio_dataset(out_dir, n_train, train_seed, "train")
    test = synthetic.make_audio_dataset(out_dir, n_test, test_seed, "test")
    return DemoData(train=train, test=test)


AUDIO_TASK = DemoTask(
    modality="audio",
    title="tones and noise: contour, beep count, register, source",
    recipe="audio",
    make=make_data,
    metric="exact",
    sizes={
        "quick": DemoSize(n_train=48, n_test=24, steps={"align": 6}),
        "default": DemoSize(n_train=600, n_test=200),
    },
    default=False,
    order=30,
)

DEMO_TASKS = {"audio-tones": AUDIO_TASK}
