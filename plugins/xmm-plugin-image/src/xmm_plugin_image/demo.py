"""The image plugin's ``xmm demo`` task: rendered shape scenes with colour, shape, position and count questions."""

from __future__ import annotations

from pathlib import Path

from xmm.recipes import DemoData, DemoSize, DemoTask


def make_data(out_dir: Path, *, n_train: int, n_test: int, train_seed: int, test_seed: int) -> DemoData:
    """Three questions per training scene, one per held-out scene."""
    from xmm_plugin_image import synthetic

    train = synthetic.make_shapes_dataset(out_dir, n_train, train_seed, questions_per_image=3, split_name="train")
    test = synthetic.make_shapes_dataset(out_dir, n_test, test_seed, questions_per_image=1, split_name="test")
    return DemoData(train=train, test=test, captions=Path(out_dir) / "train_captions.jsonl")


IMAGE_TASK = DemoTask(
    modality="image",
    title="shape scenes: colour, shape, position, count",
    recipe="image",
    make=make_data,
    metric="exact",
    sizes={
        "quick": DemoSize(n_train=48, n_test=24, steps={"convert": 10, "align": 6}),
        "default": DemoSize(n_train=1500, n_test=300, before_limit=100,
                            fp32_steps={"align": 75}),
    },
    order=20,
)

DEMO_TASKS = {"image-shapes": IMAGE_TASK}
