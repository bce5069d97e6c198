"""Reading an evaluation: per-example predictions, the breakdown by task and by expected answer, a confusion PNG,
and the text ``xmm eval`` prints.

A prediction record (one line of ``xmm eval --predictions out.jsonl``)::

    {"source": "test.jsonl:12", "task": "colour", "input": "<image: images/00012.png> What colour is the circle?",
     "expected": "red", "answer": "blue", "correct": false}

``task`` is the example's ``meta.task`` (``null`` when it has none); ``correct`` is the example's score under the
metric (exact / contains: normalised text, see :mod:`xmm.training.metrics`; wer: an exact transcript, with
``word_errors`` and ``words`` beside it).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xmm.errors import MissingDependencyError, import_optional
from xmm.training.metrics import contains, exact_match, normalize, score, word_errors

log = logging.getLogger(__name__)

# answers shown per expected answer in the breakdown; labels drawn in the confusion matrix
TOP_WRONG = 3
MAX_CONFUSION_LABELS = 24
MAX_BY_ANSWER = 60


def render_input(messages: Sequence[Mapping[str, Any]]) -> str:
    """A prompt as one readable line: media as ``<image: path>``, text as it is, turns joined by `` | ``."""
    turns = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            text = content
        else:
            pieces = []
            for p in content or []:
                if not isinstance(p, Mapping):
                    continue
                if p.get("type") == "text":
                    pieces.append(str(p.get("text", "")))
                else:
                    where = p.get("path") or p.get("url") or ("(inline)" if len(p) > 1 else "")
                    pieces.append(f"<{p.get('type')}: {where}>" if where else f"<{p.get('type')}>")
            text = " ".join(x for x in pieces if x)
        turns.append(text if len(messages) == 1 else f"{m.get('role')}: {text}")
    return " | ".join(turns)


def prediction_record(source: str, task: str | None, messages: Sequence[Mapping[str, Any]], expected: str,
                      answer: str, metric: str) -> dict[str, Any]:
    """One prediction line (see the module docstring)."""
    rec: dict[str, Any] = {"source": source, "task": task, "input": render_input(messages), "expected": expected,
                           "answer": answer}
    if metric == "contains":
        rec["correct"] = bool(contains(answer, expected))
    else:
        rec["correct"] = bool(exact_match(answer, expected))
    if metric == "wer":
        rec["word_errors"], rec["words"] = word_errors(answer, expected)
    return rec


def breakdown(predictions: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """``by_task``: ``{task: {n, score}}`` (when any example names a task); ``by_answer`` (exact / contains):
    ``{expected (normalised): {n, score, wrong: {answer: count}}}``, the most frequent expected answers first (at most
    :data:`MAX_BY_ANSWER`; ``"(others)"`` sums the rest), ``wrong`` the :data:`TOP_WRONG` commonest wrong answers."""
    out: dict[str, Any] = {}
    tasks: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in predictions:
        if p.get("task") is not None:
            tasks[str(p["task"])].append(p)
    if tasks:
        out["by_task"] = {t: {"n": len(ps), "score": score(metric, [p["answer"] for p in ps],
                                                          [p["expected"] for p in ps])}
                          for t, ps in sorted(tasks.items())}
    if metric == "wer" or not predictions:
        return out
    answers: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in predictions:
        answers[normalize(p["expected"])].append(p)
    ranked = sorted(answers.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    by_answer: dict[str, Any] = {}
    for label, ps in ranked[:MAX_BY_ANSWER]:
        wrong = Counter(normalize(p["answer"]) or "(empty)" for p in ps if not p["correct"])
        by_answer[label] = {"n": len(ps), "score": sum(bool(p["correct"]) for p in ps) / len(ps),
                            "wrong": dict(wrong.most_common(TOP_WRONG))}
    rest = [p for _, ps in ranked[MAX_BY_ANSWER:] for p in ps]
    if rest:
        by_answer["(others)"] = {"n": len(rest), "score": sum(bool(p["correct"]) for p in rest) / len(rest),
                                 "wrong": {}}
    out["by_answer"] = by_answer
    return out


def write_predictions(predictions: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write prediction records as JSONL (atomically)."""
    from xmm.io import atomic_write

    text = "".join(json.dumps(dict(p), ensure_ascii=False) + "\n" for p in predictions)
    return atomic_write(Path(path), lambda f: f.write_text(text, encoding="utf-8"))


def confusion(predictions: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[str], list[list[int]]]]:
    """Per task (``"all"`` when no example names one): ``(labels, counts)`` with ``counts[i][j]`` the examples
    expecting ``labels[i]`` answered ``labels[j]``; the last label, ``(other)``, collects answers that are no expected
    answer of the task (and expected answers beyond the :data:`MAX_CONFUSION_LABELS` commonest)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in predictions:
        groups[str(p["task"]) if p.get("task") is not None else "all"].append(p)
    out = {}
    for task, ps in sorted(groups.items()):
        common = [a for a, _ in Counter(normalize(p["expected"]) for p in ps).most_common(MAX_CONFUSION_LABELS)]
        labels = sorted(common) + ["(other)"]
        index = {a: i for i, a in enumerate(labels[:-1])}
        counts = [[0] * len(labels) for _ in labels]
        for p in ps:
            row = index.get(normalize(p["expected"]), len(labels) - 1)
            col = index.get(normalize(p["answer"]), len(labels) - 1)
            counts[row][col] += 1
        out[task] = (labels, counts)
    return out


def plot_confusion(predictions: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                   title: str = "xmm eval") -> Path | None:
    """A PNG with one confusion matrix per task (rows: expected, columns: answered). Returns None (no file) when
    there is no prediction or matplotlib (the ``plot`` extra) is missing, which is logged."""
    if not predictions:
        return None
    try:
        matplotlib = import_optional("matplotlib", extra="plot", purpose="the confusion PNG of xmm eval")
    except MissingDependencyError as e:
        log.warning("no confusion PNG: %s", e)
        return None
    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    from xmm.io import atomic_write

    tables = confusion(predictions)
    cols = min(3, len(tables))
    rows = -(-len(tables) // cols)
    side = max(3.2, 0.32 * max(len(labels) for labels, _ in tables.values()) + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), dpi=100, squeeze=False)
    for ax, (task, (labels, counts)) in zip(axes.flat, tables.items()):
        ax.imshow(counts, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("answered", fontsize=8)
        ax.set_ylabel("expected", fontsize=8)
        n = sum(map(sum, counts))
        hits = sum(counts[i][i] for i in range(len(labels) - 1))
        ax.set_title(f"{task}: {hits}/{n} exact", fontsize=9)
        for i, row in enumerate(counts):
            for j, c in enumerate(row):
                if c:
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=6,
                            color="white" if c > 0.6 * max(map(max, counts)) else "black")
    for ax in list(axes.flat)[len(tables):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def format_report(result: Mapping[str, Any]) -> str:
    """What ``xmm eval`` prints: the score, the breakdown by task and by expected answer, the off-task probe."""
    lines = [f"{result['metric']}: {result['score']:.4f} on {result['n']} examples"
             + (f" ({result['skipped']} skipped)" if result.get("skipped") else "")]
    by_task = result.get("by_task") or {}
    if by_task:
        width = max(4, *(len(t) for t in by_task))
        lines.append(f"\nby task:\n  {'task':<{width}} {'n':>5} {'score':>7}")
        lines += [f"  {t:<{width}} {v['n']:>5} {v['score']:>7.3f}" for t, v in by_task.items()]
    by_answer = result.get("by_answer") or {}
    if by_answer:
        width = max(8, *(len(a) for a in by_answer))
        lines.append(f"\nby expected answer:\n  {'expected':<{width}} {'n':>5} {'score':>7}  most frequent wrong answers")
        for a, v in by_answer.items():
            wrong = ", ".join(f"{w!r} x{c}" for w, c in v["wrong"].items())
            lines.append(f"  {a:<{width}} {v['n']:>5} {v['score']:>7.3f}  {wrong}".rstrip())
    probe = result.get("probe")
    if probe and probe.get("n"):
        lines.append(f"\noff-task probe: {probe['label_answers']}/{probe['n']} answers to prompts the data never asks "
                     f"were one of its answers ({probe['label_rate']:.2f})")
        for prompt, v in probe["by_prompt"].items():
            example = f" e.g. {v['example']!r}" if v.get("example") is not None else ""
            lines.append(f"  {prompt!r}: {v['label_answers']}/{v['n']}{example}")
        if probe["label_rate"] >= 0.5:
            lines.append("  the bridge answers its training questions whatever is asked: mix general instruction data "
                         "into training (xmm init plan --mix-general 0.2; README 'Keep the LLM's manners')")
    return "\n".join(lines)
