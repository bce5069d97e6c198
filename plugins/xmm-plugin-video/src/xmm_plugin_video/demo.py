"""The video plugin's ``xmm demo`` task: which way a shape moves across a clip."""

from __future__ import annotations

from pathlib import Path

from xmm.recipes import DemoData, DemoSize, DemoTask

# the modality samples 8 frames per clip; clips of exactly 8 frames make each one count
FRAMES = 8


def make_data(out_dir: Path, *, n_train: int, n_test: int, train_seed: int, test_seed: int) -> DemoData:
    from xmm_plugin_video import synthetic

    train = synthetic.make_moving_shapes_dataset(out_dir, n_train, train_seed, num_frames=FRAMES, split_name="train")
    test = synthetic.make_moving_shapes_dataset(out_dir, n_test, test_seed, num_frames=FRAMES, split_name="test")
    return DemoData(train=train, test=test, captions=Path(out_dir) / "train_captions.jsonl")


VIDEO_TASK = DemoTask(
    modality="video",
    title="moving shapes: direction of motion",
    recipe="video",
    make=make_data,
    metric="exact",
    sizes={
        "quick": DemoSize(n_train=32, n_test=12, steps={"convert": 4, "align": 6}),
        "default": DemoSize(n_train=960, n_test=200),
    },
    default=False,
    order=40,
)

DEMO_TASKS = {"video-moving-shapes": VIDEO_TASK}
