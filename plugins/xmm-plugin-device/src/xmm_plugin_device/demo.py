"""The device plugin's ``xmm demo`` task: questions and commands about generated telemetry windows."""

from __future__ import annotations

from pathlib import Path

from xmm.recipes import DemoData, DemoSize, DemoTask


def make_data(out_dir: Path, *, n_train: int, n_test: int, train_seed: int, test_seed: int) -> DemoData:
    """Telemetry windows with one question each; the held-out split has no captions and uniform commands."""
    from xmm_plugin_device import synthetic

    # close_app must also name the app (one of 15): training sees that command 4x as often; held-out data does not
    train = synthetic.generate(out_dir, n=n_train, seed=train_seed, split="train", action_weights={"close_app": 4.0})
    test = synthetic.generate(out_dir, n=n_test, seed=test_seed, split="test", captions=False)
    return DemoData(train=train.manifest, test=test.manifest, captions=train.captions)


DEVICE_TASK = DemoTask(
    modality="device",
    title="device telemetry questions and commands",
    recipe="device",
    make=make_data,
    metric="exact",
    sizes={
        "quick": DemoSize(n_train=96, n_test=24, steps={"convert": 10, "align": 6}),
        "default": DemoSize(n_train=6400, n_test=300, before_limit=100,
                            fp32_steps={"align": 75}),
    },
    order=10,
    max_new_tokens=16,
)

DEMO_TASKS = {"device-telemetry": DEVICE_TASK}
