"""Synthetic device telemetry with ground-truth answers, for training and evaluation.

Each example is a window of 1-8 plausible snapshots (written as a ``.json`` or ``.jsonl`` file, in varied but valid
formats and units) and one question about it; the answer comes from :mod:`xmm_plugin_device.rules` applied to the
*validated* window, so it depends on the telemetry only and never appears in the question. Sampled values keep a
small margin from every rule threshold (e.g. battery levels never within 2 points of 20 %), so labels are not
decided by rounding noise.

``python -m xmm_plugin_device.synthetic OUT --n 800 --seed 1 --split train`` writes ``OUT/train.jsonl`` (questions),
``OUT/train_captions.jsonl`` (alignment pairs: window -> description) and the telemetry under ``OUT/train/``.
Use another seed and split name for held-out data; the split name is part of the random seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from xmm.io import atomic_write_text
from xmm.progress import Progress

from xmm_plugin_device import rules
from xmm_plugin_device.loading import load_window
from xmm_plugin_device.schema import DEFAULT_APPS, NETWORK_TYPES, DeviceWindow

TASKS = ("battery_low", "charging", "network", "overheating", "draining", "action")
TASK_WEIGHTS = {"battery_low": 1.0, "charging": 1.0, "network": 1.0, "overheating": 1.0, "draining": 1.0, "action": 2.0}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "battery_low": ("Is the battery low?", "Is the battery running low?", "Is the battery level low? Answer yes or no."),
    "charging": ("Is the device charging?", "Is it charging right now?", "Is the battery charging? Answer yes or no."),
    "network": ("Which network is it on?", "What kind of network connection does the device have?",
                "Which network type is the device using?"),
    "overheating": ("Is it overheating?", "Is the device too hot?", "Is the device overheating? Answer yes or no."),
    "draining": ("Is the battery draining?", "Is the battery level going down?", "Is the battery running down over time?"),
    "action": ("What should be done?", "Which command should the device run now?",
               "What action do you recommend? Answer with a command."),
}
ACTIONS = ("reduce_performance", "start_power_saving", "toggle_wifi", "clear_cache", "close_app", "set_brightness",
           "set_volume", "no_action")
APPS = tuple(a for a in DEFAULT_APPS if a not in rules.IDLE_APPS)
MAX_WINDOW = 8

# thresholds each sampled value keeps its distance from, with the margin
_BATTERY_CUTS = (rules.BATTERY_CRITICAL, rules.BATTERY_LOW, rules.BRIGHT_BATTERY)
_BATTERY_MARGIN = 2.0
_TEMP_MARGIN = 1.5
_STORAGE_MARGIN = 1.0
_MEMORY_MARGIN = 2.0
_BRIGHT_MARGIN = 3.0
_VOLUME_MARGIN = 3.0


def _away(rng: random.Random, lo: float, hi: float, cuts: Sequence[float], margin: float, *, digits: int = 0) -> float:
    """Uniform in [lo, hi], rounded, at least ``margin`` from every cut (rejection sampling; ranges are wide)."""
    for _ in range(1000):
        x = round(rng.uniform(lo, hi), digits)
        if all(abs(x - c) >= margin for c in cuts):
            return x
    raise ValueError(f"no value in [{lo}, {hi}] keeps {margin} away from {cuts}")


def _battery(rng: random.Random, lo: float, hi: float) -> float:
    return _away(rng, lo, hi, _BATTERY_CUTS, _BATTERY_MARGIN)


def _temp(rng: random.Random, hot: bool) -> float:
    lo, hi = (rules.OVERHEAT_C + _TEMP_MARGIN, 60.0) if hot else (18.0, rules.OVERHEAT_C - _TEMP_MARGIN)
    return round(rng.uniform(lo, hi), 1)


def _free(rng: random.Random, full: bool) -> float:
    lo, hi = (0.5, rules.STORAGE_FREE_MIN - _STORAGE_MARGIN) if full else (rules.STORAGE_FREE_MIN + _STORAGE_MARGIN, 70.0)
    return rng.uniform(lo, hi)


def _memory(rng: random.Random, high: bool) -> float:
    lo, hi = (rules.MEMORY_HIGH + _MEMORY_MARGIN, 99.0) if high else (15.0, rules.MEMORY_HIGH - _MEMORY_MARGIN)
    return round(rng.uniform(lo, hi))


def _brightness(rng: random.Random, bright: bool) -> float:
    lo, hi = (rules.BRIGHT + _BRIGHT_MARGIN, 100.0) if bright else (5.0, rules.BRIGHT - _BRIGHT_MARGIN)
    return round(rng.uniform(lo, hi))


def _volume(rng: random.Random, loud: bool) -> float:
    lo, hi = (rules.LOUD + _VOLUME_MARGIN, 100.0) if loud else (0.0, rules.LOUD - _VOLUME_MARGIN)
    return round(rng.uniform(lo, hi))


@dataclass
class _State:
    """The latest snapshot's values (canonical units) while a scenario is being built."""

    level: float
    charging: bool
    temp: float
    cpu: float
    memory: float
    total_gb: float
    free_pct: float
    network: str
    signal: float | None
    screen_on: bool
    brightness: float
    volume: float
    location: str
    app: str
    drop: float = 0.0  # battery points lost from the first to the latest snapshot (negative: gained)


def _random_state(rng: random.Random) -> _State:
    # marginals roughly balanced for every yes/no question, so that the questions a window was not steered for
    # (other turns of a multi-turn example) are not lopsided either
    network = rng.choice(NETWORK_TYPES)
    return _State(
        level=_battery(rng, 1, 18) if rng.random() < 0.4 else _battery(rng, 22, 100),
        charging=rng.random() < 0.45,
        temp=_temp(rng, hot=rng.random() < 0.35),
        cpu=round(rng.uniform(2, 100)),
        memory=_memory(rng, high=rng.random() < 0.15),
        total_gb=rng.choice((32.0, 64.0, 128.0, 256.0, 512.0)),
        free_pct=_free(rng, full=rng.random() < 0.12),
        network=network,
        signal=None if network == "none" else round(rng.uniform(5, 100)),
        screen_on=rng.random() < 0.85,
        brightness=_brightness(rng, bright=rng.random() < 0.3),
        volume=_volume(rng, loud=rng.random() < 0.12),
        location=rng.choice(("granted", "while_in_use", "denied")),
        app=rng.choice(DEFAULT_APPS),
    )


def _calm(st: _State, rng: random.Random, upto: int) -> None:
    """Switch off the first ``upto`` action rules (in priority order) so that a lower one decides."""
    steps: list[Callable[[], None]] = [
        lambda: setattr(st, "temp", _temp(rng, hot=False)),
        lambda: setattr(st, "level", _battery(rng, 17, 100)) if not st.charging else None,
        lambda: _set_network(st, rng, rng.choice(("wifi", "4g", "5g", "3g", "ethernet"))),
        lambda: setattr(st, "free_pct", _free(rng, full=False)),
        lambda: setattr(st, "memory", _memory(rng, high=False)),
        lambda: setattr(st, "brightness", _brightness(rng, bright=False)),
        lambda: setattr(st, "volume", _volume(rng, loud=False)),
    ]
    for step in steps[:upto]:
        step()


def _set_network(st: _State, rng: random.Random, kind: str) -> None:
    st.network = kind
    st.signal = None if kind == "none" else round(rng.uniform(5, 100))


def _apply_action(st: _State, rng: random.Random, action: str) -> None:
    rank = ACTIONS.index(action)
    _calm(st, rng, rank)
    if action == "reduce_performance":
        st.temp = _temp(rng, hot=True)
    elif action == "start_power_saving":
        st.level, st.charging = _battery(rng, 1, 13), False
    elif action == "toggle_wifi":
        _set_network(st, rng, "none")
    elif action == "clear_cache":
        st.free_pct = _free(rng, full=True)
    elif action == "close_app":
        st.memory, st.app = _memory(rng, high=True), rng.choice(APPS)
    elif action == "set_brightness":
        st.level, st.charging = _battery(rng, 17, 28), False
        st.screen_on, st.brightness = True, _brightness(rng, bright=True)
    elif action == "set_volume":
        st.volume = _volume(rng, loud=True)


def _scenario(rng: random.Random, task: str, action_weights: Mapping[str, float] | None = None) -> tuple[_State, int]:
    """The latest snapshot's values and the window length, steered towards a balanced answer for ``task`` (for
    ``action``: a command drawn uniformly, or by ``action_weights``)."""
    st = _random_state(rng)
    n = rng.randint(1, MAX_WINDOW)
    yes = rng.random() < 0.5
    if task == "battery_low":
        st.level = _battery(rng, 1, 18) if yes else _battery(rng, 22, 100)
    elif task == "charging":
        st.charging = yes
    elif task == "network":
        _set_network(st, rng, rng.choice(NETWORK_TYPES))
    elif task == "overheating":
        st.temp = _temp(rng, hot=yes)
    elif task == "draining":
        n = max(n, 2)
        if yes:
            st.charging = False
            st.level = _battery(rng, 1, 75)
            st.drop = round(rng.uniform(rules.DRAIN_POINTS + 2, 25))
        else:
            st.drop = -round(rng.uniform(0, 10)) if st.charging else round(rng.uniform(-1, 1))
    elif task == "action":
        # the uniform draw stays rng.choice so that data generated without weights does not change
        action = (rng.choice(ACTIONS) if action_weights is None
                  else rng.choices(ACTIONS, weights=[action_weights.get(a, 1.0) for a in ACTIONS])[0])
        _apply_action(st, rng, action)
    if task != "draining" and n > 1:
        # windows of other tasks drain or charge realistically; drops stay clear of the draining threshold
        st.drop = -round(rng.uniform(0, 10)) if st.charging else rng.choice((0.0, round(rng.uniform(rules.DRAIN_POINTS + 2, 20))))
    if st.level + st.drop > 100 or st.level + st.drop < 0:
        st.drop = 0.0
    return st, n


def _fmt_temp(rng: random.Random, c: float) -> Any:
    r = rng.random()
    if r < 0.6:
        return c
    if r < 0.8:
        return f"{c}C"
    if r < 0.9:
        return f"{round(c * 9 / 5 + 32, 2)}F"
    return {"value": round(c + 273.15, 2), "unit": "K"}


def _fmt_percent(rng: random.Random, x: float) -> Any:
    return f"{x:g}%" if rng.random() < 0.15 else x


def _fmt_gb(rng: random.Random, gb: float) -> Any:
    r = rng.random()
    if r < 0.6:
        return round(gb, 3)
    if r < 0.85:
        return f"{round(gb, 3)}GB"
    return f"{round(gb * 1000, 1)}MB"


def _snapshots(rng: random.Random, st: _State, n: int) -> list[dict[str, Any]]:
    """Raw snapshot dicts, oldest first, ending at ``st``; earlier ones drift around it."""
    end = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randint(0, 365 * 86400))
    gaps = [rng.randint(20, 1200) for _ in range(n - 1)]
    times = [end - timedelta(seconds=sum(gaps[i:])) for i in range(n - 1)] + [end]
    fracs = sorted(rng.random() for _ in range(n - 2))
    # battery path from level+drop (first) to level (latest), monotone between them
    first = st.level + st.drop
    levels = [first] + [round(first - st.drop * f) for f in fracs] + [st.level] if n > 1 else [st.level]
    used = st.total_gb * (1 - st.free_pct / 100)
    out = []
    for i in range(n):
        latest = i == n - 1
        temp = st.temp if latest else round(min(max(st.temp + rng.uniform(-4, 4), 15.0), 70.0), 1)
        network = st.network if latest or rng.random() < 0.8 else rng.choice(NETWORK_TYPES)
        signal = st.signal if latest else (None if network == "none" else round(rng.uniform(5, 100)))
        snap: dict[str, Any] = {
            "timestamp": times[i].isoformat().replace("+00:00", "Z") if rng.random() < 0.8 else times[i].timestamp(),
            "battery": {"level": _fmt_percent(rng, levels[i]), "charging": st.charging},
            "temperature": _fmt_temp(rng, temp),
            "cpu_load": st.cpu if latest else round(rng.uniform(2, 100)),
            "memory_load": _fmt_percent(rng, st.memory if latest else round(rng.uniform(15, 99))),
            "storage": {"used": _fmt_gb(rng, used), "total": _fmt_gb(rng, st.total_gb)},
            "network": {"type": network} if signal is None else {"type": network, "signal": signal},
            "screen": {"on": st.screen_on, "brightness": st.brightness},
            "volume": st.volume,
            "location_permission": st.location,
            "foreground_app": st.app if latest or rng.random() < 0.7 else rng.choice(DEFAULT_APPS),
        }
        out.append(snap)
    if rng.random() < 0.1:
        rng.shuffle(out)  # files need not be in time order: the loader sorts by timestamp
    return out


@dataclass
class Example:
    """One generated example: raw snapshots, the validated window, the question and its expected answer."""

    snapshots: list[dict[str, Any]]
    window: DeviceWindow
    task: str
    question: str
    answer: str
    caption: str


def _check_action_weights(action_weights: Mapping[str, float]) -> None:
    bad = sorted(set(action_weights) - set(ACTIONS))
    if bad:
        raise ValueError(f"unknown commands in action_weights {bad}; known: {', '.join(ACTIONS)}")
    weights = [action_weights.get(a, 1.0) for a in ACTIONS]
    if min(weights) < 0 or not sum(weights) > 0:
        raise ValueError(f"action_weights must be >= 0 with a positive total, got {dict(action_weights)}")


def sample_example(rng: random.Random, task: str | None = None, tasks: Sequence[str] = TASKS,
                   action_weights: Mapping[str, float] | None = None) -> Example:
    """One example for ``task`` (default: drawn by ``TASK_WEIGHTS`` among ``tasks``)."""
    if task is None:
        task = rng.choices(list(tasks), weights=[TASK_WEIGHTS[t] for t in tasks])[0]
    if task not in QUESTIONS:
        raise ValueError(f"unknown device task '{task}'; known: {', '.join(TASKS)}")
    if action_weights is not None:
        _check_action_weights(action_weights)
    st, n = _scenario(rng, task, action_weights)
    raw = _snapshots(rng, st, n)
    window = load_window(raw)  # the answer is computed from exactly what the model will see
    return Example(raw, window, task, rng.choice(QUESTIONS[task]), rules.answer(task, window), rules.caption(window))


@dataclass
class GenerationReport:
    """What :func:`generate` wrote, with per-task answer counts and the majority-answer (chance) accuracy."""

    manifest: Path
    captions: Path | None
    n: int
    answers: dict[str, Counter[str]] = field(default_factory=dict)

    def majority_accuracy(self) -> dict[str, float]:
        """Per task and overall: the accuracy of always giving each task's most frequent answer."""
        out = {t: c.most_common(1)[0][1] / sum(c.values()) for t, c in sorted(self.answers.items())}
        total = sum(sum(c.values()) for c in self.answers.values())
        out["overall"] = sum(c.most_common(1)[0][1] for c in self.answers.values()) / max(total, 1)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "captions": str(self.captions) if self.captions else None,
            "n": self.n,
            "answers": {t: dict(c.most_common()) for t, c in sorted(self.answers.items())},
            "majority_accuracy": self.majority_accuracy(),
        }


def _message(path: str, turns: Sequence[tuple[str | None, str]]) -> list[dict[str, Any]]:
    """User/assistant messages: the device part opens the first user turn; ``turns`` = (question, answer) pairs."""
    messages: list[dict[str, Any]] = []
    for i, (question, answer) in enumerate(turns):
        user: list[dict[str, Any]] = [{"type": "device", "path": path}] if i == 0 else []
        if question is not None:
            user.append({"type": "text", "text": question})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages


def _more_turns(rng: random.Random, ex: Example, tasks: Sequence[str], turns: int) -> list[tuple[str, str, str]]:
    """(task, question, answer) for the example's own task plus ``turns - 1`` other tasks, in random order."""
    others = rng.sample([t for t in tasks if t != ex.task], min(turns - 1, len(tasks) - 1))
    out = [(ex.task, ex.question, ex.answer)]
    out += [(t, rng.choice(QUESTIONS[t]), rules.answer(t, ex.window)) for t in others]
    rng.shuffle(out)
    return out


def generate(
    out_dir: str | Path,
    *,
    n: int,
    seed: int = 0,
    split: str = "train",
    tasks: Sequence[str] = TASKS,
    captions: bool = True,
    turns: int = 1,
    jsonl_fraction: float = 0.2,
    action_weights: Mapping[str, float] | None = None,
) -> GenerationReport:
    """Write ``n`` examples: telemetry files under ``out_dir/split/``, the question manifest ``out_dir/split.jsonl``
    and (``captions``) the alignment manifest ``out_dir/split_captions.jsonl``. Deterministic in (seed, split).

    ``turns > 1`` makes each example a conversation of that many questions (distinct tasks) about one window, as
    LLaVA packs an image's questions: one pass over the device tokens then trains several answers. Evaluation
    manifests should keep ``turns=1`` (the score reads the last answer of each line).

    ``action_weights`` (command name -> relative weight, 1 for those not named) oversamples commands in training data:
    ``close_app`` must also name the app, one of 15, so at the uniform rate each app is seen rarely. Held-out data
    should keep the default (uniform) so that scores stay comparable."""
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if not 1 <= turns <= len(tasks):
        raise ValueError(f"turns must be between 1 and the number of tasks ({len(tasks)}), got {turns}")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown device tasks {unknown}; known: {', '.join(TASKS)}")
    if action_weights is not None:
        _check_action_weights(action_weights)  # before any file is written
    out_dir = Path(out_dir)
    rng = random.Random(f"xmm-device:{seed}:{split}")  # str seeds are hashed deterministically (not salted)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    qa_lines, cap_lines = [], []
    report = GenerationReport(out_dir / f"{split}.jsonl", out_dir / f"{split}_captions.jsonl" if captions else None, n)
    bar = Progress(n, desc=f"data device {split}", unit="window")
    for i in range(n):
        ex = sample_example(rng, tasks=tasks, action_weights=action_weights)
        rel = f"{split}/{i:05d}" + (".jsonl" if rng.random() < jsonl_fraction else ".json")
        if rel.endswith(".jsonl"):
            body = "".join(json.dumps(s) + "\n" for s in ex.snapshots)
        else:
            body = json.dumps({"snapshots": ex.snapshots} if rng.random() < 0.5 else ex.snapshots, indent=1) + "\n"
        atomic_write_text(out_dir / rel, body)
        qa = _more_turns(rng, ex, tasks, turns) if turns > 1 else [(ex.task, ex.question, ex.answer)]
        meta: dict[str, Any] = {"task": qa[-1][0], "split": split, "index": i, "fingerprint": ex.window.fingerprint()}
        if turns > 1:
            meta["tasks"] = [t for t, _, _ in qa]
        qa_lines.append(json.dumps({"messages": _message(rel, [(q, a) for _, q, a in qa]), "meta": meta}))
        cap_lines.append(json.dumps({"messages": _message(rel, [(None, ex.caption)]), "meta": {**meta, "task": "caption"}}))
        for task, _, answer in qa:
            report.answers.setdefault(task, Counter())[answer] += 1
        bar.update(1)
    bar.close()
    atomic_write_text(report.manifest, "\n".join(qa_lines) + "\n")
    if report.captions is not None:
        atomic_write_text(report.captions, "\n".join(cap_lines) + "\n")
    return report


def _parse_weights(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:  # also a part without '='
            raise ValueError(f"--action-weights wants CMD=NUMBER pairs, got '{part}'") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmm_plugin_device.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--n", type=int, default=800, help="number of examples (default 800)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="split name: file prefix and part of the seed")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--no-captions", action="store_true", help="do not write the alignment (caption) manifest")
    p.add_argument("--turns", type=int, default=1, help="questions per example (a conversation about one window)")
    p.add_argument("--action-weights", default="", metavar="CMD=W,...",
                   help="oversample commands in training data, e.g. close_app=4 (others weigh 1)")
    args = p.parse_args(argv)
    try:
        action_weights = _parse_weights(args.action_weights) if args.action_weights else None
        report = generate(args.out, n=args.n, seed=args.seed, split=args.split,
                          tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], captions=not args.no_captions,
                          turns=args.turns, action_weights=action_weights)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(report.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
