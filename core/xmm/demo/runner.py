"""Run the demo: data -> before-eval -> staged training -> after-eval -> table, plots and chat examples."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from xmm.demo.tasks import DEFAULT_SET, ORDER, TASKS, DemoTask, Size, TaskData
from xmm.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("quick", "default", "all")


@dataclass
class Row:
    """One line of the results table."""

    modality: str
    task: str
    metric: str
    n: int  # held-out examples scored after training
    before: float  # score before training (on the first ``n_before`` of them)
    after: float
    chance: float | None
    minutes: float
    n_before: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class DemoResult:
    """What a demo run produced: the table, where the files are and the chat examples shown."""

    mode: str
    rows: list[Row]
    output_dir: Path
    model_dir: Path
    minutes_total: float
    examples: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "minutes_total": round(self.minutes_total, 2),
            "results": [r.as_dict() for r in self.rows],
            "model_dir": str(self.model_dir),
            "files": self.files,
            "examples": self.examples,
        }


def select_tasks(mode: str) -> list[DemoTask]:
    if mode not in MODES:
        raise ConfigError(f"unknown demo mode '{mode}'; choose one of {', '.join(MODES)}", field="mode")
    names = ORDER if mode == "all" else DEFAULT_SET
    return [TASKS[n] for n in names if n in TASKS]


def _size(task: DemoTask, mode: str) -> Size:
    return task.sizes.get(mode) or task.sizes["default"]


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _answer(example: dict[str, Any]) -> str:
    parts = example["messages"][-1]["content"]
    return parts if isinstance(parts, str) else " ".join(p.get("text", "") for p in parts if p.get("type") == "text")


def _task_of(example: dict[str, Any]) -> str:
    return str(example.get("meta", {}).get("task", "all"))


def chance_by_task(train: Path, test: Path) -> dict[str, float]:
    """Exact-match score of guessing uniformly among the answers a task has in training (per task)."""
    options: dict[str, set[str]] = defaultdict(set)
    for ex in _read_manifest(train):
        options[_task_of(ex)].add(_answer(ex).strip().lower())
    return {task: 1.0 / len(answers) for task, answers in options.items() if answers}


def build_plan(tasks: list[DemoTask], data: dict[str, TaskData], mode: str, out: Path, seed: int) -> dict[str, Any]:
    """An X-LLM-style staged plan: one alignment stage per modality (its bridge, and its encoder when it has no
    pretrained weights, on captions and questions), then an integration stage over all modalities' questions with
    every encoder frozen and only the bridges trained, at a lower learning rate."""
    stages = []
    for t in tasks:
        size = _size(t, mode)
        d = data[t.modality]
        # captions align a bridge that has no convert stage; after one, the questions alone are the better use of steps
        train = [str(d.train)] + ([str(d.captions)] if d.captions and not size.convert_steps else [])
        groups = [{"params": t.trainable, "lr": t.trainable_lr}] if t.trainable and t.trainable_lr else []
        if size.convert_steps:
            # X-LLM's first stage converts the modality into the LLM's word space; here without running the LLM:
            # the bridge's question-guided tokens learn the answers' words through the LLM's own embedding table,
            # and an encoder with no pretrained weights learns with them, then stays frozen
            stages.append({
                "name": f"convert-{t.modality}",
                "trainable": [f"bridge:{t.modality}", *t.trainable],
                "data": {"train": [str(d.train)]},
                "objectives": ["guided_answer"],
                "optimizer": {"type": "adamw", "lr": t.convert_lr, "weight_decay": 0.0, "groups": groups},
                "schedule": {"type": "cosine", "warmup_steps": max(1, size.convert_steps // 20), "min_lr_ratio": 0.1},
                "max_steps": size.convert_steps,
                "batch_size": t.convert_batch_size,
            })
        align_extra = [] if size.convert_steps else t.trainable
        stages.append({
            "name": f"align-{t.modality}",
            "trainable": [f"bridge:{t.modality}", *align_extra],
            "data": {"train": train},
            "objectives": list(t.objectives),
            "optimizer": {"type": "adamw", "lr": t.lr, "weight_decay": 0.0, "groups": groups if align_extra else []},
            "schedule": {"type": "cosine", "warmup_steps": max(1, size.align_steps // 20), "min_lr_ratio": 0.1},
            "max_steps": size.align_steps,
            "batch_size": t.batch_size,
        })
    # the joint stage is where the bridges settle together (the earlier device recipe, 1,600 windows and 4 guided
    # tokens: 0.85 after 37 steps, 0.87 after 100, 0.95 after 147 in an --all run)
    integrate_steps = max(2, sum(_size(t, mode).align_steps for t in tasks) // 3)
    stages.append({
        "name": "integrate",
        "trainable": [f"bridge:{t.modality}" for t in tasks],
        "data": {"train": [str(data[t.modality].train) for t in tasks]},
        # every task's objectives (an objective whose bridge is not in a batch contributes nothing)
        "objectives": list(dict.fromkeys(o for t in tasks for o in t.objectives)),
        "optimizer": {"type": "adamw", "lr": min(t.lr for t in tasks) / 5, "weight_decay": 0.0},
        "schedule": {"type": "cosine", "warmup_steps": 1, "min_lr_ratio": 0.1},
        "max_steps": integrate_steps,
        "batch_size": max(t.batch_size for t in tasks),
    })
    return {
        "model": model_config(tasks),
        "output_dir": str(out / "run"),
        "cache_dir": str(out / "features"),
        "seed": seed,
        "on_bad_sample": "skip",
        "log_every": 1,
        "report_to": "jsonl",
        "stages": stages,
    }


def model_config(tasks: list[DemoTask]) -> dict[str, Any]:
    # an empty system turn instead of SmolLM2's default one: ~15 fewer tokens in every training and eval sequence
    return {"llm": "smollm2", "system_prompt": "", "modalities": {t.modality: dict(t.model) for t in tasks}}


def _answer_budget(model: Any, task: DemoTask, lines: list[dict[str, Any]]) -> int:
    """New tokens to generate: the longest held-out answer plus two (a longer output cannot match it, so untrained
    bridges that ramble are cut short), at most ``task.max_new_tokens``. WER scores every token, so it keeps the cap."""
    if task.metric != "exact" or not lines:
        return task.max_new_tokens
    longest = max(len(model.tokenizer(_answer(ex), add_special_tokens=False)["input_ids"]) for ex in lines)
    return max(1, min(task.max_new_tokens, longest + 2))


def _score_by_task(model: Any, task: DemoTask, manifest: Path, limit: int | None, cache: Path) -> tuple[dict[str, tuple[int, float]], list[dict[str, Any]]]:
    """Evaluate ``model`` on ``manifest``; returns {task: (n, score)} including "all", and the predictions."""
    from xmm.training import evaluate
    from xmm.training.metrics import score

    lines = _read_manifest(manifest)
    res = evaluate(model, manifest, task.metric, max_new_tokens=_answer_budget(model, task, lines[:limit]), batch_size=32,
                   limit=limit, feature_cache=cache, return_predictions=True)
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    preds = []
    for p in res["predictions"]:
        line = int(str(p["source"]).rsplit(":", 1)[1])
        ex = lines[line - 1]
        groups[_task_of(ex)].append((p["prediction"], p["reference"]))
        preds.append({**p, "example": ex})
    out = {k: (len(v), score(task.metric, [a for a, _ in v], [b for _, b in v])) for k, v in sorted(groups.items())}
    out["all"] = (res["n"], res["score"])
    return out, preds


def run_demo(mode: str = "default", output_dir: str | Path = "xmm-demo", *, seed: int = 0, examples: int = 3,
             out: TextIO | None = None) -> DemoResult:
    """Run the demo in ``mode`` (quick | default | all) under ``output_dir``; progress goes to ``out`` (stderr)."""
    from xmm.model import MultimodalLM
    from xmm.training import train

    out = out or sys.stderr
    t_start = time.perf_counter()
    tasks = select_tasks(mode)
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    # 1. data with known answers: separate seeds and files for train and held-out
    data: dict[str, TaskData] = {}
    minutes: dict[str, float] = defaultdict(float)
    for t in tasks:
        t0 = time.perf_counter()
        data[t.modality] = t.make(root / "data" / t.modality, _size(t, mode), seed)
        minutes[t.modality] += (time.perf_counter() - t0) / 60
        say(f"[data] {t.modality}: train {data[t.modality].train}, held-out {data[t.modality].test}")

    plan = build_plan(tasks, data, mode, root, seed)
    plan_path = root / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    cache = root / "features"

    # 2. before training: the same architecture with freshly initialised bridges
    import torch

    torch.manual_seed(seed)
    before_model = MultimodalLM.from_config(plan["model"])
    before: dict[str, dict[str, tuple[int, float]]] = {}
    for t in tasks:
        t0 = time.perf_counter()
        size = _size(t, mode)
        limit = size.before_limit if size.before_limit is not None else size.eval_limit
        before[t.modality], _ = _score_by_task(before_model, t, data[t.modality].test, limit, cache)
        minutes[t.modality] += (time.perf_counter() - t0) / 60
        say(f"[before] {t.modality}: {before[t.modality]['all'][1]:.3f} on {before[t.modality]['all'][0]} held-out examples")
    llm = (before_model.llm, before_model.tokenizer, before_model.llm_info)
    del before_model

    # 3. staged training (progress bars from the trainer)
    t0 = time.perf_counter()
    result = train(plan_path)
    train_minutes = (time.perf_counter() - t0) / 60
    stage_minutes = _stage_minutes(result.output_dir)
    for t in tasks:
        minutes[t.modality] += stage_minutes.get(f"convert-{t.modality}", 0.0) + stage_minutes.get(f"align-{t.modality}", 0.0)
    integrate = stage_minutes.get("integrate", 0.0)
    for t in tasks:  # the joint stage's time is shared by the modalities it trains
        minutes[t.modality] += integrate / len(tasks)
    say(f"[train] {train_minutes:.1f} min; final model in {result.model_dir}")

    # 4. after training, from the saved checkpoint (what a user would load)
    model = MultimodalLM.from_pretrained(result.model_dir, llm=llm)
    rows: list[Row] = []
    shown: list[dict[str, Any]] = []
    for t in tasks:
        t0 = time.perf_counter()
        after, preds = _score_by_task(model, t, data[t.modality].test, _size(t, mode).eval_limit, cache)
        minutes[t.modality] += (time.perf_counter() - t0) / 60
        chance = chance_by_task(data[t.modality].train, data[t.modality].test) if t.metric == "exact" else {}
        counts = Counter(_task_of(p["example"]) for p in preds)
        overall_chance = (sum(chance.get(k, 0.0) * c for k, c in counts.items()) / max(1, sum(counts.values()))) if chance else None
        for name, (n, sc) in after.items():
            nb, bs = before[t.modality].get(name, (0, 0.0))
            rows.append(Row(t.modality, name, t.metric, n, bs, sc, overall_chance if name == "all" else chance.get(name),
                            minutes[t.modality], nb))
        rng = random.Random(seed)
        for p in rng.sample(preds, min(examples, len(preds))):
            shown.append(_chat_example(t.modality, p))
    total = (time.perf_counter() - t_start) / 60

    files = _write_reports(root, rows, result.output_dir, mode)
    res = DemoResult(mode, rows, root, result.model_dir, total, shown, files)
    (root / "results.json").write_text(json.dumps(res.as_dict(), indent=2) + "\n")
    return res


def _stage_minutes(run_dir: Path) -> dict[str, float]:
    """Wall minutes per stage: the sum of the step times the trainer logged in ``<run>/logs/train.jsonl``."""
    spent: dict[str, float] = defaultdict(float)
    for path in sorted((Path(run_dir) / "logs").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "stage" in rec and "step_time_s" in rec:
                spent[rec["stage"]] += float(rec["step_time_s"]) / 60
    return dict(spent)


def _chat_example(modality: str, pred: dict[str, Any]) -> dict[str, Any]:
    ex = pred["example"]
    user = ex["messages"][0]["content"]
    files = [p.get("path") for p in user if isinstance(p, dict) and p.get("type") != "text"]
    question = " ".join(p.get("text", "") for p in user if isinstance(p, dict) and p.get("type") == "text")
    return {"modality": modality, "files": files, "question": question, "answer": pred["prediction"],
            "expected": pred["reference"]}


def _write_reports(root: Path, rows: list[Row], run_dir: Path, mode: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.modality}\n{r.task}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    w = 0.28
    ax.bar([i - w for i in x], [r.before for r in rows], w, label="before")
    ax.bar(list(x), [r.after for r in rows], w, label="after")
    ax.bar([i + w for i in x], [r.chance or 0 for r in rows], w, label="chance")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylim(0, max([1.05, *(max(r.before, r.after) * 1.05 for r in rows)]))  # a WER can exceed 1
    ax.set_ylabel("held-out score (wer: lower is better)" if any(r.metric == "wer" for r in rows) else "held-out score")
    ax.set_title(f"xmm demo ({mode}): SmolLM2-135M-Instruct with new senses")
    ax.legend(fontsize=8)
    fig.tight_layout()
    results_png = root / "results.png"
    fig.savefig(results_png, dpi=110)
    plt.close(fig)
    files = {"results_png": str(results_png), "results_json": str(root / "results.json")}
    curve = Path(run_dir) / "loss_curve.png"
    if curve.exists():
        files["loss_curve_png"] = str(curve)
    return files


def format_table(res: DemoResult) -> str:
    head = f"{'modality':<9} {'task':<14} {'metric':<7} {'n':>5} {'before':>7} {'after':>7} {'chance':>7} {'minutes':>8} {'n_before':>8}"
    lines = [head, "-" * len(head)]
    for r in res.rows:
        chance = f"{r.chance:.3f}" if r.chance is not None else "-"
        lines.append(f"{r.modality:<9} {r.task:<14} {r.metric:<7} {r.n:>5} {r.before:>7.3f} {r.after:>7.3f} {chance:>7} "
                     f"{r.minutes:>8.2f} {r.n_before:>8}")
    lines.append(f"total wall time: {res.minutes_total:.2f} min")
    return "\n".join(lines)


def format_examples(res: DemoResult) -> str:
    out = []
    for ex in res.examples:
        files = ", ".join(Path(f).name for f in ex["files"] if f)
        ok = "ok" if ex["answer"].strip().lower().rstrip(".") == ex["expected"].strip().lower() else f"expected: {ex['expected']}"
        out.append(f"[{ex['modality']}: {files}] user: {ex['question'] or '(no text)'}\n    xmm: {ex['answer']}   ({ok})")
    return "\n".join(out)
