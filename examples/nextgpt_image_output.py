"""Any-to-any output with xmm, NExT-GPT style: teach SmolLM2-135M-Instruct to answer with image signal tokens and
turn them into a picture through a diffusers pipeline.

What it does, offline, in a few minutes on a CPU:

1. builds a tiny Stable Diffusion pipeline from configs (random weights: its pictures are noise, the plumbing is
   real - point ``--pipeline`` at a local SD folder for real pictures);
2. runs the ``nextgpt`` preset's decoder-side alignment stage with the xmm trainer on caption -> signal-token pairs:
   only the 4 signal-token rows and the output projector train, against the signal-token NLL and the MSE between
   projected signal states and the pipeline's own text-encoder embedding of the caption;
3. asks the trained model for a picture; the answer's signal tokens go through the projector to ``prompt_embeds``
   and the pipeline writes a PNG.

    python examples/nextgpt_image_output.py [--steps 60] [--out runs/nextgpt-image] [--pipeline DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SIGNALS = "<img_0><img_1><img_2><img_3>"
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]


def captions() -> list[str]:
    return [f"a {c} {s} on a plain background" for c in COLOURS for s in SHAPES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of the alignment stage")
    parser.add_argument("--out", type=Path, default=Path("runs/nextgpt-image"), help="run folder")
    parser.add_argument("--pipeline", type=Path, default=None, help="a local diffusers text-to-image pipeline folder")
    parser.add_argument("--prompt", default="Draw a red circle on a plain background.")
    args = parser.parse_args(argv)

    from xmm.decoders.tiny import tiny_stable_diffusion
    from xmm.model import MultimodalLM
    from xmm.training import train

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pipeline = args.pipeline
    if pipeline is None:
        pipeline = out / "tiny-sd"
        tiny_stable_diffusion(max_length=77, hidden=64, image_size=64).save_pretrained(pipeline)
    pairs = out / "caption_pairs.jsonl"
    with open(pairs, "w") as f:
        for c in captions():
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Draw {c}."},
                                             {"role": "assistant", "content": SIGNALS}],
                                "meta": {"caption": c}}) + "\n")
    plan = {
        "preset": "nextgpt",
        "output_dir": str(out / "run"),
        "model": {"llm": "smollm2", "modalities": {},
                  "outputs": {"image": {"decoder": "diffusers", "projector": {"type": "transformer", "hidden_dim": 256,
                                                                              "num_encoder_layers": 2, "num_decoder_layers": 2},
                                        "decoder_config": {"pipeline": str(pipeline), "num_inference_steps": 10}}}},
        "stages": {"encoder_alignment": False, "instruction_tuning": False,
                   "decoder_alignment": {"data": {"train": [str(pairs)]}, "max_steps": args.steps, "batch_size": 8,
                                         "optimizer": {"lr": 2.0e-3}, "schedule": {"type": "constant", "warmup_steps": 0}}},
    }
    result = train(plan)
    log = [json.loads(x) for x in (out / "run" / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss/decoder_alignment" in r]
    print(f"decoder alignment MSE: {steps[0]['loss/decoder_alignment']:.4f} -> {steps[-1]['loss/decoder_alignment']:.4f}; "
          f"answer NLL (signal tokens + end of turn): {steps[0]['loss/lm']:.3f} -> {steps[-1]['loss/lm']:.3f} "
          f"over {len(steps)} steps; trainable parameters: {result.stages[0]['trainable_params']:,}")

    model = MultimodalLM.from_pretrained(out / "run" / "model")
    answer = model.generate([{"role": "user", "content": args.prompt}], max_new_tokens=8)
    tokens = model.tokenizer.convert_ids_to_tokens(answer.token_ids[0])
    print(f"prompt: {args.prompt!r}\nanswer tokens: {tokens}")
    produced = answer.outputs.get("image", [])
    for i, item in enumerate(produced):
        print(f"image written: {item.save(out / f'answer-image-{i}')}")
    if not produced:
        print("the model did not emit a complete group of signal tokens; train longer (--steps)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
