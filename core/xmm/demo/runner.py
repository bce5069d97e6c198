"""Run the demo: data -> before-eval -> staged training -> after-eval -> table, plots and chat examples."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from xmm.errors import ConfigError, import_optional
from xmm.recipes import DEMO_MODES, DemoData, DemoTask, Recipe

log = logging.getLogger(__name__)

MODES = DEMO_MODES
# the joint stage runs a third as many steps as the modalities' alignment stages together
JOINT_SHARE = 3
# the joint stage's batches are cut from windows of this many batches sorted by length: its modalities' sequences
# differ in length several-fold, and a batch mixing them pads every row to the longest
JOINT_BUCKETS = 64


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


def select_tasks(mode: str, names: Sequence[str] | None = None, *, registry: Any = None) -> list[DemoTask]:
    """The installed demo tasks of ``mode`` in their order: those marked ``default`` (every task with ``all``), or
    the tasks ``names`` (registry names) when given."""
    from xmm.registry import get_registry

    if mode not in MODES:
        raise ConfigError(f"unknown demo mode '{mode}'; choose one of {', '.join(MODES)}", field="mode")
    reg = registry or get_registry()
    if names:
        chosen = [reg.demo_task(n) for n in dict.fromkeys(names)]
    else:
        chosen = [t for t in reg.demo_tasks.values() if mode == "all" or t.default]
    if not chosen:
        raise ConfigError(f"no demo task is installed for mode '{mode}': demo tasks come with modality plugins "
                          "(see `xmm plugins`)", field="mode")
    chosen.sort(key=lambda t: t.order)
    seen = [t.modality for t in chosen]
    dup = sorted({m for m in seen if seen.count(m) > 1})
    if dup:
        raise ConfigError(f"one demo task per modality; several chosen for {dup}", field="tasks")
    return chosen


def task_recipe(task: DemoTask, mode: str, *, registry: Any = None, fp32: bool | None = None) -> Recipe:
    """The registered recipe ``task`` trains with, its steps sized for ``mode`` (and, where training runs in fp32 on a
    CPU - ``fp32`` None: :func:`trains_in_fp32_on_cpu` -, the size's ``fp32_steps``)."""
    from xmm.registry import get_registry

    recipe = (registry or get_registry()).recipe(task.recipe)
    if recipe.modality != task.modality:
        raise ConfigError(f"the {task.modality} demo task names recipe '{task.recipe}', which trains {recipe.modality}",
                          field="recipe")
    size = task.size(mode)
    if fp32 is None:
        fp32 = trains_in_fp32_on_cpu()
    return recipe.with_steps({**size.steps, **size.fp32_steps} if fp32 else size.steps)


def trains_in_fp32_on_cpu() -> bool:
    """True when the demo trains on the CPU (no CUDA or MPS device) and that CPU has no native bf16, so training runs
    in fp32 (AVX2-only CPUs: bf16 would be ~70x slower there)."""
    from xmm.model.build import resolve_device
    from xmm.model.numerics import cpu_supports_bf16

    return resolve_device(None).type == "cpu" and not cpu_supports_bf16()


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _answer(example: dict[str, Any]) -> str:
    parts = example["messages"][-1]["content"]
    return parts if isinstance(parts, str) else " ".join(p.get("text", "") for p in parts if p.get("type") == "text")


def _task_of(example: dict[str, Any]) -> str:
    return str(example.get("meta", {}).get("task", "all"))


def chance_by_task(train: Path) -> dict[str, float]:
    """Exact-match score of guessing uniformly among the answers a task has in training (per task)."""
    options: dict[str, set[str]] = defaultdict(set)
    for ex in _read_manifest(train):
        options[_task_of(ex)].add(_answer(ex).strip().lower())
    return {task: 1.0 / len(answers) for task, answers in options.items() if answers}


def build_plan(tasks: list[DemoTask], data: dict[str, DemoData], mode: str, out: Path, seed: int, *,
               registry: Any = None) -> dict[str, Any]:
    """The plan of an X-LLM-style run: each task's recipe stages for its modality alone (named ``STAGE-MODALITY``),
    then one joint stage over every modality's questions (the recipes' joint stages merged: the largest batch, every
    objective - one whose bridge is not in a batch contributes nothing -, each bridge at its own recipe's joint
    learning rate, and each modality's share of the examples fixed by :func:`joint_mix`; its manifests are written
    by :func:`write_joint_data`)."""
    recipes = {t.modality: task_recipe(t, mode, registry=registry) for t in tasks}
    stages = [s for t in tasks for s in recipes[t.modality].plan_stages(data[t.modality].manifests(), suffix=t.modality,
                                                                        joint=False)]
    joint = [(t, recipes[t.modality]) for t in tasks if recipes[t.modality].joint_stage is not None]
    if joint:
        stages.append(_joint_stage(joint, data))
    return {
        "model": model_config(recipes),
        "output_dir": str(out / "run"),
        "cache_dir": str(out / "features"),
        "seed": seed,
        "on_bad_sample": "skip",
        "log_every": 1,
        "report_to": "jsonl",
        "stages": stages,
    }


def _joint_steps(joint: list[tuple[DemoTask, Recipe]]) -> int:
    # the alignment stage is the one each recipe runs right before its joint stage
    return max(2, sum(r.own_stages[-1].steps for _, r in joint if r.own_stages) // JOINT_SHARE)


@dataclass(frozen=True)
class JointPart:
    """One modality's part of the joint stage: its manifests (roles the joint stage reads), where its mixed manifest
    goes, and how many examples it holds."""

    modality: str
    sources: tuple[Path, ...]
    target: Path
    examples: int


def joint_mix(joint: list[tuple[DemoTask, Recipe]], data: dict[str, DemoData]) -> list[JointPart]:
    """Each modality's examples in the joint stage: its share of one pass of ``steps x batch`` examples is its share
    of the modalities' alignment steps (what each was trained with alone), at least one batch. Concatenating the
    manifests instead lets the largest training set fill the mixed batches (6,400 device windows against 480 clips)
    and the others are forgotten."""
    parts = [(t, r.joint_stage) for t, r in joint]
    batch = max(s.batch_size for _, s in parts if s is not None)
    total = _joint_steps(joint) * batch
    own = {t.modality: (r.own_stages[-1].steps if r.own_stages else 1) for t, r in joint}
    out = []
    for t, s in parts:
        sources = tuple(Path(p) for role, paths in data[t.modality].manifests().items() if s and role in s.data
                        for p in paths)
        n = max(batch, round(total * own[t.modality] / sum(own.values())))
        # beside the modality's own manifests: their media paths are relative to that folder
        out.append(JointPart(t.modality, sources, Path(data[t.modality].train).parent / f"joint-{t.modality}.jsonl", n))
    return out


def write_joint_data(parts: list[JointPart], seed: int) -> None:
    """Write each part's mixed manifest: its examples shuffled with ``seed``, repeated (reshuffled) when it has
    fewer than its share, cut when it has more."""
    for k, part in enumerate(parts):
        lines = [line for p in part.sources for line in Path(p).read_text().splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"the {part.modality} demo task has no training examples for the joint stage",
                              field="data", source=str(part.sources[0]) if part.sources else None)
        rng = random.Random(seed * 1009 + k)
        picked: list[str] = []
        while len(picked) < part.examples:
            rng.shuffle(lines)
            picked += lines[: part.examples - len(picked)]
        part.target.write_text("\n".join(picked) + "\n")


def _joint_stage(joint: list[tuple[DemoTask, Recipe]], data: dict[str, DemoData]) -> dict[str, Any]:
    parts = [(t, r.joint_stage) for t, r in joint]
    first = parts[0][1]
    objectives: dict[str, float] = {}
    params: dict[str, dict[str, Any]] = {}
    for _, s in parts:
        for name, weight in s.objectives.items():
            objectives.setdefault(name, weight)
            if name in s.objective_params:
                params.setdefault(name, s.objective_params[name])
    # each bridge keeps its own recipe's joint learning rate (one shared lowest rate starved the others)
    groups = {f"bridge:{t.modality}": s.lr for t, s in parts}
    groups.update({k.format(modality=t.modality): v for t, s in parts for k, v in s.lr_groups.items()})
    trainable = tuple(dict.fromkeys(sel.format(modality=t.modality) for t, s in parts for sel in s.trainable))
    merged = first.model_copy(update={
        "trainable": tuple(dict.fromkeys((*trainable, *groups))),
        "lr_groups": groups,
        "objectives": objectives,
        "objective_params": params,
        "data": ("train",),
        "lr": min(s.lr for _, s in parts),
        "batch_size": max(s.batch_size for _, s in parts),
        "steps": _joint_steps(joint),
    })
    mixed = {"train": [str(part.target) for part in joint_mix(joint, data)]}
    # the selectors are already per modality, so formatting them again changes nothing
    stage = merged.plan_stage("+".join(t.modality for t, _ in parts), mixed)
    stage["data"]["buckets"] = JOINT_BUCKETS
    return stage


def model_config(recipes: dict[str, Recipe]) -> dict[str, Any]:
    """The run's model: SmolLM2 with each recipe's encoder and bridge."""
    # an empty system turn instead of SmolLM2's default one: ~15 fewer tokens in every training and eval sequence
    return {"llm": "smollm2", "system_prompt": "", "modalities": {m: r.modality_config() for m, r in recipes.items()}}


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
        groups[_task_of(ex)].append((p["answer"], p["expected"]))
        preds.append({**p, "example": ex})
    out = {k: (len(v), score(task.metric, [a for a, _ in v], [b for _, b in v])) for k, v in sorted(groups.items())}
    out["all"] = (res["n"], res["score"])
    return out, preds


def run_demo(mode: str = "default", output_dir: str | Path = "xmm-demo", *, seed: int = 0, examples: int = 3,
             names: Sequence[str] | None = None, out: TextIO | None = None) -> DemoResult:
    """Run the demo in ``mode`` (quick | default | all) under ``output_dir``: the mode's installed demo tasks, or the
    demo tasks ``names``; progress goes to ``out`` (stderr)."""
    from xmm.model import MultimodalLM
    from xmm.training import train

    out = out or sys.stderr
    t_start = time.perf_counter()
    tasks = select_tasks(mode, names)
    _pyplot()  # the report needs it: say so now, not after the training
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    # 1. data with known answers: separate seeds and files for train and held-out
    data: dict[str, DemoData] = {}
    minutes: dict[str, float] = defaultdict(float)
    for t in tasks:
        t0 = time.perf_counter()
        data[t.modality] = t.make_data(root / "data" / t.modality, mode, seed)
        minutes[t.modality] += (time.perf_counter() - t0) / 60
        say(f"[data] {t.modality}: train {data[t.modality].train}, held-out {data[t.modality].test}")

    plan = build_plan(tasks, data, mode, root, seed)
    joint = [(t, task_recipe(t, mode)) for t in tasks]
    write_joint_data(joint_mix([(t, r) for t, r in joint if r.joint_stage is not None], data), seed)
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
        size = t.size(mode)
        limit = size.before_limit if size.before_limit is not None else size.eval_limit
        before[t.modality], _ = _score_by_task(before_model, t, data[t.modality].test, limit, cache)
        minutes[t.modality] += (time.perf_counter() - t0) / 60
        say(f"[before] {t.modality}: {before[t.modality]['all'][1]:.3f} on {before[t.modality]['all'][0]} held-out examples")
    llm = before_model.loaded_llm
    del before_model

    # 3. staged training (progress bars from the trainer)
    t0 = time.perf_counter()
    result = train(plan_path)
    train_minutes = (time.perf_counter() - t0) / 60
    for stage, spent in _stage_minutes(result.output_dir).items():
        owner = [t.modality for t in tasks if stage.endswith(f"-{t.modality}")]
        for m in owner or [t.modality for t in tasks]:  # the joint stage's time is shared by the modalities it trains
            minutes[m] += spent / (len(owner) or len(tasks))
    say(f"[train] {train_minutes:.1f} min; final model in {result.model_dir}")

    # 4. after training, from the saved checkpoint (what a user would load)
    model = MultimodalLM.from_pretrained(result.model_dir, llm=llm)
    rows: list[Row] = []
    shown: list[dict[str, Any]] = []
    for t in tasks:
        t0 = time.perf_counter()
        after, preds = _score_by_task(model, t, data[t.modality].test, t.size(mode).eval_limit, cache)
        minutes[t.modality] += (time.perf_counter() - t0) / 60
        d = data[t.modality]
        chance = t.chance(d) if t.chance else chance_by_task(d.train) if t.metric == "exact" else {}
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
    """Wall minutes per stage: the sum of the record windows (``window_s``) the trainer logged in ``<run>/logs/``."""
    spent: dict[str, float] = defaultdict(float)
    for path in sorted((Path(run_dir) / "logs").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "stage" in rec and "window_s" in rec:  # the wall time since the previous record
                spent[rec["stage"]] += float(rec["window_s"]) / 60
    return dict(spent)


def _chat_example(modality: str, pred: dict[str, Any]) -> dict[str, Any]:
    ex = pred["example"]
    user = ex["messages"][0]["content"]
    files = [p.get("path") for p in user if isinstance(p, dict) and p.get("type") != "text"]
    question = " ".join(p.get("text", "") for p in user if isinstance(p, dict) and p.get("type") == "text")
    return {"modality": modality, "files": files, "question": question, "answer": pred["answer"],
            "expected": pred["expected"]}


def _pyplot() -> Any:
    matplotlib = import_optional("matplotlib", extra="plot", purpose="the demo's results.png")
    matplotlib.use("Agg")
    return import_optional("matplotlib.pyplot", extra="plot", purpose="the demo's results.png")


def _write_reports(root: Path, rows: list[Row], run_dir: Path, mode: str) -> dict[str, str]:
    plt = _pyplot()

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
