"""A synthetic image task with known answers: scenes of one to three coloured shapes, with questions and captions.

Each scene has 1-3 shapes (colour in red/green/blue/yellow, kind in circle/square/triangle) at distinct positions
(left/right/top/bottom/centre), with random size, jitter and a light background; no two shapes share colour *and*
kind, so every question has one answer. Questions (answered by one lowercase word):

- ``What colour is the {shape}?`` - only when exactly one shape of that kind is in the scene (task ``colour``)
- ``What shape is the {colour} one?`` - only when exactly one shape has that colour (task ``shape``)
- ``Where is the {colour} {shape}?`` - left/right/top/bottom/centre (task ``position``)
- ``How many shapes are there?`` - one/two/three (task ``count``)

Output (the trainer's JSONL format, media paths relative to the manifest): ``out_dir/images/<split>_NNNNN.png``
(224x224 RGB), ``out_dir/<split>.jsonl`` (questions, ``meta.task`` set) and ``out_dir/<split>_captions.jsonl``
(image -> caption pairs for alignment, e.g. "a red circle on the left and a blue square at the top").

CLI: ``python -m xmm_plugin_image.synthetic OUT --n 600 --seed 1 [--split train] [--questions-per-image 2]``.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from xmm.errors import ConfigError
from xmm.io import atomic_write, atomic_write_text
from xmm.progress import Progress

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (34, 160, 64),
    "blue": (36, 84, 214),
    "yellow": (236, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
# anchor centres on a 224 canvas; with half-size <= 24 and jitter <= 6 no two positions' shapes overlap
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (46, 112),
    "right": (178, 112),
    "top": (112, 46),
    "bottom": (112, 178),
    "centre": (112, 112),
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                     "centre": "in the centre"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
IMAGE_SIZE = 224
_SUPERSAMPLE = 2  # draw at 2x and downsample, for smooth edges


@dataclass(frozen=True)
class Shape:
    """One shape in a scene; ``x``, ``y``, ``half`` in pixels of the 224 canvas."""

    colour: str
    kind: str
    position: str
    x: int
    y: int
    half: int


def sample_scene(rng: random.Random) -> list[Shape]:
    """1-3 shapes at distinct positions, no two with the same colour and kind."""
    n = rng.randint(1, 3)
    positions = rng.sample(list(POSITIONS), n)
    combos = rng.sample([(c, k) for c in COLOURS for k in SHAPES], n)
    scene = []
    for pos, (colour, kind) in zip(positions, combos):
        ax, ay = POSITIONS[pos]
        scene.append(Shape(colour, kind, pos, ax + rng.randint(-6, 6), ay + rng.randint(-6, 6), rng.randint(15, 24)))
    return scene


def random_background(rng: random.Random) -> tuple[int, int, int]:
    """A light, slightly tinted background colour."""
    r, g, b = (rng.randint(225, 250) for _ in range(3))
    return r, g, b


def render_scene(scene: list[Shape], rng: random.Random | None = None, *, background: tuple[int, int, int] | None = None,
                 size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` (coordinates on a 224 canvas) on ``background`` (default: :func:`random_background`) as an RGB
    image of ``size`` x ``size``."""
    s = _SUPERSAMPLE
    if background is None:
        background = random_background(rng or random.Random())
    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), background)
    draw = ImageDraw.Draw(img)
    for sh in scene:
        x, y, h, fill = sh.x * s, sh.y * s, sh.half * s, COLOURS[sh.colour]
        if sh.kind == "circle":
            draw.ellipse((x - h, y - h, x + h, y + h), fill=fill)
        elif sh.kind == "square":
            draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        else:
            draw.polygon([(x, y - h), (x - h, y + h), (x + h, y + h)], fill=fill)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def scene_questions(scene: list[Shape]) -> list[tuple[str, str, str]]:
    """Every unambiguous ``(task, question, answer)`` for a scene."""
    out: list[tuple[str, str, str]] = []
    for kind in SHAPES:
        of_kind = [sh for sh in scene if sh.kind == kind]
        if len(of_kind) == 1:
            out.append(("colour", f"What colour is the {kind}?", of_kind[0].colour))
    for colour in COLOURS:
        of_colour = [sh for sh in scene if sh.colour == colour]
        if len(of_colour) == 1:
            out.append(("shape", f"What shape is the {colour} one?", of_colour[0].kind))
    for sh in scene:
        out.append(("position", f"Where is the {sh.colour} {sh.kind}?", sh.position))
    out.append(("count", "How many shapes are there?", COUNT_WORDS[len(scene)]))
    return out


def scene_caption(scene: list[Shape]) -> str:
    """E.g. ``a red circle on the left, a green square at the top and a blue triangle in the centre``."""
    parts = [f"a {sh.colour} {sh.kind} {POSITION_PHRASES[sh.position]}" for sh in scene]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def make_shapes_dataset(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    *,
    questions_per_image: int = 2,
    split_name: str = "train",
) -> Path:
    """Render ``n_images`` scenes and write the question and caption manifests; returns the question manifest path.

    Use a different ``seed`` *and* ``split_name`` for each split (train/test): file names carry the split, and
    the seed decides the scenes. ``questions_per_image`` questions are drawn without replacement per scene (fewer
    when a scene has fewer unambiguous questions).
    """
    if n_images < 1:
        raise ConfigError(f"must be >= 1, got {n_images}", field="n_images")
    if questions_per_image < 1:
        raise ConfigError(f"must be >= 1, got {questions_per_image}", field="questions_per_image")
    check_split_name(split_name)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"xmm-shapes:{seed}")
    qa_lines: list[str] = []
    caption_lines: list[str] = []
    bar = Progress(n_images, desc=f"data image {split_name}", unit="image")
    for i in range(n_images):
        scene = sample_scene(rng)
        img = render_scene(scene, rng)
        rel = f"images/{split_name}_{i:05d}.png"
        atomic_write(out / rel, lambda p, img=img: img.save(p, format="PNG"))
        meta_scene = [asdict(sh) for sh in scene]
        candidates = scene_questions(scene)
        for task, question, answer in rng.sample(candidates, min(questions_per_image, len(candidates))):
            qa_lines.append(chat_example("image", rel, question, answer, {"task": task, "image_id": i, "split": split_name, "scene": meta_scene}))
        caption_lines.append(chat_example("image", rel, None, scene_caption(scene), {"task": "caption", "image_id": i, "split": split_name}))
        bar.update(1)
    bar.close()
    manifest = out / f"{split_name}.jsonl"
    atomic_write_text(manifest, "\n".join(qa_lines) + "\n")
    atomic_write_text(out / f"{split_name}_captions.jsonl", "\n".join(caption_lines) + "\n")
    return manifest


def chat_example(media_type: str, media_path: str, question: str | None, answer: str, meta: dict[str, Any]) -> str:
    """One JSONL line in the trainer's format: user = [media (+ question)], assistant = answer; ``meta`` on top."""
    user: list[dict[str, Any]] = [{"type": media_type, "path": media_path}]
    if question is not None:
        user.append({"type": "text", "text": question})
    msg = {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "meta": meta,
    }
    return json.dumps(msg, separators=(",", ":"))


def check_split_name(split_name: str) -> None:
    """Split names become file prefixes and manifest names: plain identifiers only."""
    if not split_name or not split_name.replace("-", "_").isidentifier():
        raise ConfigError(f"must be a simple name like 'train', got {split_name!r}", field="split_name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmm_plugin_image.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (use another one for the test split)")
    parser.add_argument("--split", default="train", help="split name: file prefix and manifest name (default train)")
    parser.add_argument("--questions-per-image", type=int, default=2, help="questions per image (default 2)")
    args = parser.parse_args(argv)
    manifest = make_shapes_dataset(args.out, args.n, args.seed, questions_per_image=args.questions_per_image, split_name=args.split)
    print(f"wrote {manifest} and {manifest.with_name(f'{args.split}_captions.jsonl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
