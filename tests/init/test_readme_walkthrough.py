"""The README's "Train on your own data" commands, run exactly as written (in a fresh folder, with the tiny test LLM
named through $XMM_LLM instead of SmolLM2 and progress lines every second)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough_commands() -> list[str]:
    """The command lines of the first ```bash block under '## Train on your own data' (comments left out)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Train on your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_walkthrough_is_the_documented_sequence() -> None:
    tools = [shlex.split(c)[:2] for c in walkthrough_commands()]
    assert [t[1] if t[0] == "xmm" else t[0] for t in tools] == ["python", "python", "init", "cache", "train", "eval",
                                                                 "chat"]


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path: Path, tiny_llm_dir: Path) -> None:
    env = {**os.environ, "XMM_LLM": str(tiny_llm_dir), "XMM_HOME": str(tmp_path / "xmm_home"),
           "XMM_PROGRESS_EVERY": "1", "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("XMM_NO_PROGRESS", None)  # a user sees the progress lines; so does this test
    work = tmp_path / "work"
    work.mkdir()
    outputs = {}
    for command in walkthrough_commands():
        res = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
        outputs[shlex.split(command)[1] if command.startswith("xmm") else command] = res

    init = outputs["init"]
    assert "measured:" in init.stdout and " s/step" in init.stdout and "steps: convert " in init.stdout
    plan = (work / "plan.yaml").read_text(encoding="utf-8")
    assert plan.startswith("# Written by `xmm init plan`") and f"llm: {tiny_llm_dir}" in plan
    assert "[cache scan convert]" in outputs["cache"].stderr
    train = outputs["train"]
    assert "[train convert] 0/" in train.stderr and "| done" in train.stderr and "Loading weights" not in train.stderr
    assert "stage convert:" in train.stdout and "stage align:" in train.stdout
    summary = json.loads((work / "runs" / "plan" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["convert", "align"]
    records = [json.loads(line) for line in (work / "runs" / "plan" / "logs" / "train.jsonl").read_text().splitlines()]
    step = next(r for r in records if "event" not in r)
    assert {"samples_per_s", "s_per_step", "window_steps", "window_s", "step_time_s", "eta_s"} <= set(step)

    evaluation = outputs["eval"]
    assert evaluation.stdout.startswith("exact: ") and "by task:" in evaluation.stdout
    assert "by expected answer:" in evaluation.stdout and "off-task probe:" in evaluation.stdout
    rows = [json.loads(line) for line in (work / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 30 and {r["task"] for r in rows} <= {"colour", "shape", "position", "count"}
    assert all(r["answer"] == r["answer"].strip() for r in rows)
    assert outputs["chat"].stdout.endswith("\n")  # the streamed answer, ended by its newline
