"""The LLM-as-recogniser experiment: train the speech bridge on espeak-ng speech, report WER on held-out espeak
speech and on the LibriVox utterances of pocketsphinx-testdata.

    python plugins/xmm-plugin-speech/scripts/wer_experiment.py OUT_DIR [--train 600 --test 60 --steps 120
        --batch 8 --lr 1e-3 --window 10] [--text /usr/share/common-licenses/GPL-3 ...]

Frozen Whisper-base (offline default) -> CIF + C-Former bridge (trained with the lm and cif_quantity objectives) ->
frozen SmolLM2-135M-Instruct. Writes OUT_DIR/data (manifests), OUT_DIR/plan.yaml, OUT_DIR/runs/wer (checkpoint) and
prints one JSON line with steps, minutes and WERs. ``--window 30`` uses Whisper's full 30 s windows (the encoder
default, ~5x slower on CPU than 10 s windows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def plan_dict(args: argparse.Namespace) -> dict:
    speech: dict = {}
    if args.window != 30:
        speech["encoder_config"] = {"window_seconds": args.window}
    return {
        "model": {"llm": "smollm2", "modalities": {"speech": speech}},
        "output_dir": "runs/wer",
        "cache_dir": "cache",
        "log_every": 5,
        "seed": args.seed,
        "stages": [{
            "name": "align",
            "trainable": ["bridge:speech"],
            "data": {"train": ["data/train.jsonl"]},
            "objectives": {"lm": 1.0, "cif_quantity": 1.0},
            "optimizer": {"type": "adamw", "lr": args.lr, "weight_decay": 0.01},
            "schedule": {"type": "cosine", "warmup_steps": max(1, args.steps // 12), "min_lr_ratio": 0.1},
            "max_steps": args.steps,
            "batch_size": args.batch,
        }],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--window", type=int, default=10, help="Whisper window in seconds (30 = the encoder default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", type=Path, action="append", default=[], help="prose files mixed into the sentences")
    ap.add_argument("--digits", action="store_true", help="digit strings only: a small-vocabulary sanity task")
    args = ap.parse_args()

    from xmm.model import MultimodalLM
    from xmm.training import evaluate, train
    from xmm_plugin_speech import synthetic

    out = args.out_dir.resolve()
    data = out / "data"
    text = [a for t in args.text for a in ("--text", str(t))] + (["--digits"] if args.digits else [])
    if not (data / "train.jsonl").exists():
        synthetic.main([str(data), "--n", str(args.train), "--seed", str(args.seed), "--split", "train", "--librivox", *text])
        synthetic.main([str(data), "--n", str(args.test), "--seed", str(args.seed + 1), "--split", "test",
                        "--exclude", str(data / "train.jsonl"), *text])
    (out / "plan.yaml").write_text(yaml.safe_dump(plan_dict(args), sort_keys=False))
    start = time.perf_counter()
    result = train(out / "plan.yaml")
    minutes = (time.perf_counter() - start) / 60
    model = MultimodalLM.from_pretrained(result.model_dir)
    report = {"steps": args.steps, "batch_size": args.batch, "train_examples": args.train, "window_seconds": args.window,
              "train_minutes": round(minutes, 1), "global_step": result.global_step}
    for name in ("test", "librivox"):
        r = evaluate(model, data / f"{name}.jsonl", metric="wer", max_new_tokens=40, return_predictions=True)
        report[f"wer_{name}"] = round(r["score"], 3)
        report[f"examples_{name}"] = [p for p in r.get("predictions", [])[:3]]
    print(json.dumps(report, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
