"""A synthetic video task with known answers: one coloured shape moving left, right, up or down.

Each clip (MP4, H.264, 224x224, ``num_frames`` frames at ``fps``) shows a shape (red/green/blue/yellow
circle/square/triangle) crossing the frame in one direction, with random size, speed, start and lane, on a light
background; ``distractors`` static shapes of other colour+kind combinations may stand still beside it. Only motion
tells the answer, so a model that sees one frame (or frames without their order) is at chance (25 %).

Question: ``Which way is the {colour} {shape} moving?`` -> ``left`` / ``right`` / ``up`` / ``down`` (task ``direction``).
Captions (alignment pairs): ``a red circle moving left``.

Output (the trainer's JSONL format, paths relative to the manifest): ``out_dir/videos/<split>_NNNNN.mp4``,
``out_dir/<split>.jsonl`` and ``out_dir/<split>_captions.jsonl``. Use different seeds and split names for train/test.

CLI: ``python -m xmm_plugin_video.synthetic OUT --n 200 --seed 1 [--split train] [--frames 16] [--distractors 0]``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import ConfigError
from xmm.io import atomic_write_text
from xmm_plugin_image.synthetic import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Shape,
    chat_example,
    check_split_name,
    random_background,
    render_scene,
)

from xmm_plugin_video.writing import write_video

DIRECTIONS = ("left", "right", "up", "down")
_DELTA = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
CANVAS = 224


def moving_scene_frames(rng: random.Random, num_frames: int, distractors: int = 0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Render one clip: ``num_frames`` RGB arrays ``[224, 224, 3]`` and its labels (colour, shape, direction, path)."""
    combos = rng.sample([(c, k) for c in COLOURS for k in SHAPES], 1 + distractors)
    colour, kind = combos[0]
    direction = rng.choice(DIRECTIONS)
    half = rng.randint(14, 22)
    travel = rng.randint(100, 150)  # pixels covered over the clip
    margin = half + 4
    along_start = rng.randint(margin, CANVAS - margin - travel)  # start on the "negative" side of the motion axis
    lane = rng.randint(margin + 30, CANVAS - margin - 30)
    dx, dy = _DELTA[direction]
    if dx < 0 or dy < 0:
        along_start = CANVAS - along_start  # moving left/up: start on the right/bottom
    statics = []
    for (c, k), pos in zip(combos[1:], rng.sample(list(POSITIONS), distractors)):
        x, y = POSITIONS[pos]
        statics.append(Shape(c, k, pos, x, y, rng.randint(12, 18)))
    background = random_background(rng)
    frames, path = [], []
    for i in range(num_frames):
        along = along_start + (dx + dy) * round(travel * i / max(1, num_frames - 1))
        x, y = (along, lane) if dx else (lane, along)
        path.append((x, y))
        mover = Shape(colour, kind, "moving", x, y, half)
        frames.append(np.asarray(render_scene([*statics, mover], background=background)))
    labels = {"colour": colour, "shape": kind, "direction": direction, "path": path,
              "distractors": [(s.colour, s.kind, s.position) for s in statics]}
    return frames, labels


def make_moving_shapes_dataset(
    out_dir: str | Path,
    n_videos: int,
    seed: int,
    *,
    num_frames: int = 16,
    fps: int = 8,
    distractors: int = 0,
    split_name: str = "train",
) -> Path:
    """Write ``n_videos`` clips and their question and caption manifests; returns the question manifest's path."""
    if n_videos < 1:
        raise ConfigError(f"must be >= 1, got {n_videos}", field="n_videos")
    if num_frames < 2:
        raise ConfigError(f"motion needs at least 2 frames, got {num_frames}", field="num_frames")
    if not 0 <= distractors <= 3:
        raise ConfigError(f"must be 0..3, got {distractors}", field="distractors")
    check_split_name(split_name)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"xmm-moving-shapes:{seed}")
    qa, captions = [], []
    for i in range(n_videos):
        frames, labels = moving_scene_frames(rng, num_frames, distractors)
        rel = f"videos/{split_name}_{i:05d}.mp4"
        write_video(out / rel, frames, fps=fps, crf=18, gop=num_frames)
        meta = {"task": "direction", "video_id": i, "split": split_name, **{k: labels[k] for k in ("colour", "shape", "direction")}}
        question = f"Which way is the {labels['colour']} {labels['shape']} moving?"
        qa.append(chat_example("video", rel, question, labels["direction"], meta))
        captions.append(chat_example("video", rel, None, f"a {labels['colour']} {labels['shape']} moving {labels['direction']}",
                                 {**meta, "task": "caption"}))
    manifest = out / f"{split_name}.jsonl"
    atomic_write_text(manifest, "\n".join(qa) + "\n")
    atomic_write_text(out / f"{split_name}_captions.jsonl", "\n".join(captions) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmm_plugin_video.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--n", type=int, default=200, help="number of clips (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (use another one for the test split)")
    parser.add_argument("--split", default="train", help="split name: file prefix and manifest name (default train)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--fps", type=int, default=8, help="frame rate (default 8)")
    parser.add_argument("--distractors", type=int, default=0, help="static shapes beside the moving one (0-3)")
    args = parser.parse_args(argv)
    manifest = make_moving_shapes_dataset(args.out, args.n, args.seed, num_frames=args.frames, fps=args.fps,
                                          distractors=args.distractors, split_name=args.split)
    print(f"wrote {manifest} and {manifest.with_name(f'{args.split}_captions.jsonl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
