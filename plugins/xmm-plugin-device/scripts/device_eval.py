"""Per-task accuracy of a device checkpoint on a generated manifest (what ``xmm eval`` reports, split by task).

    python plugins/xmm-plugin-device/scripts/device_eval.py CHECKPOINT data/device/test.jsonl [--json]

Scores with ``xmm.training.evaluate`` (normalised exact match, as ``xmm eval --metric exact``) and adds, for the
``action`` task, the strict score: the answer parses as a valid ``DeviceCommand`` equal to the expected one.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from xmm_plugin_device.commands import CommandError, parse_command


def per_task_report(manifest: Path, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per ``meta.task`` from ``evaluate(..., return_predictions=True)`` output."""
    from xmm.training.metrics import exact_match

    tasks = {}
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if line.strip():
            tasks[f"{manifest}:{n}"] = json.loads(line).get("meta", {}).get("task", "?")
    hits: dict[str, list[float]] = defaultdict(list)
    strict: list[float] = []
    for p in predictions:
        task = tasks.get(p["source"], "?")
        hits[task].append(exact_match(p["answer"], p["expected"]))
        if task == "action":
            try:
                strict.append(float(parse_command(p["answer"]) == parse_command(p["expected"])))
            except CommandError:
                strict.append(0.0)
    out: dict[str, Any] = {t: {"n": len(v), "accuracy": sum(v) / len(v)} for t, v in sorted(hits.items())}
    if strict:
        out["action_strict"] = {"n": len(strict), "accuracy": sum(strict) / len(strict)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from xmm.resolver import load_model
    from xmm.training.evaluate import evaluate

    model = load_model(args.checkpoint)
    t0 = time.time()
    res = evaluate(model, args.manifest.resolve(), "exact", max_new_tokens=16, batch_size=args.batch_size,
                   limit=args.limit, return_predictions=True)
    report = {"n": res["n"], "exact": res["score"], "skipped": res["skipped"], "seconds": round(time.time() - t0, 1),
              "tasks": per_task_report(args.manifest.resolve(), res["predictions"])}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"held-out exact match: {report['exact']:.3f} on {report['n']} examples ({report['seconds']} s)")
    for task, r in report["tasks"].items():
        print(f"  {task:14s} {r['accuracy']:.3f}  (n={r['n']})")


if __name__ == "__main__":
    main()
