"""X-LLM-style staged training of the device modality with a plain loop on ``MultimodalLM`` (no trainer).

Stage 1 (align): device encoder + bridge learn from captions (window -> description), LM loss.
Stage 2 (instruct): the encoder is frozen; the bridge learns the questions and commands.
Then a held-out manifest is scored per task. The supported route is ``xmm train`` with
``configs/xllm-device.yaml``; this script is the reference loop it was checked against.

    python plugins/xmm-plugin-device/scripts/train_device_loop.py --data DIR --out CKPT [--stage1-steps 120 ...]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch


def _examples(manifest: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [{"messages": r["messages"], "base_dir": manifest.parent} for r in rows]


def _stage(model: Any, collator: Any, examples: list[dict[str, Any]], *, modules: list[torch.nn.Module], steps: int,
           batch_size: int, lr: float, seed: int, name: str) -> float:
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * (1 - 0.9 * s / max(steps, 1)))
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    t0 = time.time()
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        idx, order = order[:batch_size], order[batch_size:]
        out = model(collator([examples[i] for i in idx]))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps - 1:
            print(f"[{name}] step {step + 1}/{steps} loss {out.loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with train.jsonl, train_captions.jsonl, test.jsonl")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    ap.add_argument("--stage1-steps", type=int, default=120)
    ap.add_argument("--stage2-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from xmm.model import MultimodalCollator, MultimodalLM
    from xmm.training.evaluate import evaluate

    sys_path = Path(__file__).resolve().parent
    import sys

    sys.path.insert(0, str(sys_path))
    from device_eval import per_task_report

    torch.manual_seed(args.seed)
    model = MultimodalLM.from_config({"modalities": {"device": {}}})
    collator = MultimodalCollator(model)
    comps = model.named_components()
    enc, bridge = comps["encoder:device"], comps["bridge:device"]
    t1 = _stage(model, collator, _examples(args.data / "train_captions.jsonl"), modules=[enc, bridge],
                steps=args.stage1_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, name="align")
    enc.freeze()
    t2 = _stage(model, collator, _examples(args.data / "train.jsonl"), modules=[bridge],
                steps=args.stage2_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed + 1, name="instruct")
    model.save_pretrained(args.out)
    test = (args.data / "test.jsonl").resolve()
    t0 = time.time()
    res = evaluate(model, test, "exact", max_new_tokens=16, batch_size=16, limit=args.eval_limit, return_predictions=True)
    report = {"train_minutes": round((t1 + t2) / 60, 2), "stage_seconds": [round(t1), round(t2)], "n": res["n"],
              "exact": res["score"], "eval_seconds": round(time.time() - t0), "tasks": per_task_report(test, res["predictions"])}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
