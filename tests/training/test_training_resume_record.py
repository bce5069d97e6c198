"""Resume that keeps the record: summary.json lists every stage, train.jsonl marks the restart (the stopped attempt's
steps after its checkpoint move to logs/discarded.jsonl), and a changed length or learning rate applies on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xmm.training import loop
from xmm.training.logging import read_log
from xmm.training.loop import train
from xmm.training.plan_changes import compare_plans


def _plan(tiny_plan, llm: Path, *, more_steps: int = 8, more_lr: float = 1e-3) -> dict:
    plan = tiny_plan(Path("."), llm, stage={"max_steps": 4}, checkpoint_every=2)
    plan["stages"].append({"name": "more", "trainable": ["bridge:vec"], "data": {"train": "train.jsonl"},
                           "optimizer": {"lr": more_lr}, "max_steps": more_steps, "batch_size": 4,
                           "mixed_precision": "no"})
    return plan


def _stop_at_call(monkeypatch: pytest.MonkeyPatch, n: int) -> object:
    """The n-th optimiser step of the run raises, as if the process were killed there; returns the real step."""
    real, calls = loop.optimizer_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", step)
    return real


def test_resume_with_a_shorter_stage_and_a_new_lr_keeps_the_record(tmp_path: Path, tiny_llm_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, tiny_plan,
                                                                  write_task, caplog: pytest.LogCaptureFixture) -> None:
    write_task(tmp_path, 16)
    real = _stop_at_call(monkeypatch, 10)  # stage 1: 4 steps; stage 2 dies in its 6th, after its step-4 checkpoint
    with pytest.raises(RuntimeError, match="killed"):
        train(_plan(tiny_plan, tiny_llm_dir), base_dir=tmp_path)
    monkeypatch.setattr(loop, "optimizer_step", real)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    assert max(r["step"] for r in read_log(run / "logs" / "train.jsonl") if "event" not in r) == 9

    with caplog.at_level("WARNING", logger="xmm.training"):
        result = train(_plan(tiny_plan, tiny_llm_dir, more_steps=6, more_lr=2e-3), base_dir=tmp_path, resume=True)
    assert "stages.1.max_steps: 8 -> 6" in caplog.text and "stages.1.optimizer.lr: 0.001 -> 0.002" in caplog.text

    records = read_log(run / "logs" / "train.jsonl")
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == list(range(1, 11))  # each step once: 9 was logged by the stopped attempt, then run again
    restart = next(r for r in records if r.get("event") == "restart")
    after = records[records.index(restart) + 1]  # then the resumed stage starts again where the checkpoint was
    assert after["event"] == "stage_start" and after["stage"] == "more" and after["resumed_at"] == 4
    assert restart["step"] == 8 and restart["attempt"] == 2 and restart["checkpoint"] == "step-00000008"
    assert restart["discarded_records"] == 1 and restart["discarded_steps"] == [9, 9]
    assert "stages.1.max_steps: 8 -> 6" in restart["changes"]["applied"]
    discarded = read_log(run / "logs" / "discarded.jsonl")
    assert [(r["step"], r["attempt"]) for r in discarded] == [(9, 1)]

    # the new learning rate from the resume point on (constant schedule: exactly the plan's rate)
    assert [r["lr"] for r in records if r.get("stage") == "more" and "event" not in r] == [1e-3] * 4 + [2e-3] * 2
    summary = json.loads((run / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["align", "more"] == [s["stage"] for s in result.stages]
    assert summary["stages"][0]["steps"] == 4 and summary["stages"][1]["steps"] == 6
    assert len(summary["restarts"]) == 1 and summary["global_step"] == 10


def test_resume_with_an_unchanged_plan_says_nothing_about_changes(tmp_path: Path, tiny_llm_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, tiny_plan,
                                                                  write_task) -> None:
    write_task(tmp_path, 16)
    real = _stop_at_call(monkeypatch, 6)  # dies in stage 2's 2nd step: resumes from the end of stage 1
    with pytest.raises(RuntimeError, match="killed"):
        train(_plan(tiny_plan, tiny_llm_dir, more_steps=3), base_dir=tmp_path)
    monkeypatch.setattr(loop, "optimizer_step", real)
    train(_plan(tiny_plan, tiny_llm_dir, more_steps=3), base_dir=tmp_path, resume=True)
    records = read_log(tmp_path / "run" / "logs" / "train.jsonl")
    restart = next(r for r in records if r.get("event") == "restart")
    assert restart["checkpoint"] == "stage-1-align" and restart["changes"] == {}
    assert [r["step"] for r in records if "event" not in r] == list(range(1, 8))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["align", "more"]


def _stages(*specs: dict) -> dict:
    return {"output_dir": "run", "log_every": 1, "stages": [dict(s) for s in specs]}


@pytest.mark.parametrize(
    ("new", "at", "done", "kind", "line"),
    [
        ({"name": "b", "max_steps": 5, "batch_size": 4}, 1, False, "applied", "stages.1.max_steps: 9 -> 5"),
        ({"name": "b", "max_steps": 9, "batch_size": 8}, 1, False, "inexact", "stages.1.batch_size: 4 -> 8"),
        ({"name": "b", "max_steps": 9, "batch_size": 8}, 0, True, None, None),  # stage b has not started: as written
        ({"name": "b", "max_steps": 5, "batch_size": 4}, 1, True, "ignored", "stages.1.max_steps: 9 -> 5"),
    ],
)
def test_plan_changes_are_classified_by_where_the_run_is(new, at, done, kind, line) -> None:
    old = _stages({"name": "a", "max_steps": 3, "batch_size": 4}, {"name": "b", "max_steps": 9, "batch_size": 4})
    changed = _stages({"name": "a", "max_steps": 3, "batch_size": 4}, new)
    changes = compare_plans(old, changed, stage_index=at, stage_done=done)
    if kind is None:
        assert not changes
    else:
        assert getattr(changes, kind) == [line] and sum(map(len, changes.as_dict().values())) == 1


def test_plan_changes_of_the_run_and_of_stage_names() -> None:
    old = _stages({"name": "a", "max_steps": 3}, {"name": "b", "max_steps": 9})
    new = {**_stages({"name": "x", "max_steps": 3}, {"name": "b", "max_steps": 9}), "log_every": 5, "seed": 2}
    changes = compare_plans(old, new, stage_index=1, stage_done=False)
    assert changes.applied == ["log_every: 1 -> 5"]
    assert changes.inexact[0].startswith("stages: ['a', 'b'] -> ['x', 'b']") and "seed: None -> 2" in changes.inexact
