"""`xmm train`, `xmm cache build` and `xmm eval` in-process, and evaluate()'s scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from xmm.cli.main import app
from xmm.training import evaluate


def test_train_cache_and_eval_commands(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_plan, write_task) -> None:
    from xmm_tiny_training_plugin import VecEncoder

    write_task(tmp_path, 8, bad_lines=True)
    plan = write_plan(tmp_path, tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 2}))
    runner = CliRunner()
    before = VecEncoder.calls
    res = runner.invoke(app, ["cache", "build", str(plan), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["items"] == 9 and report["computed"] == 8 and report["cached"] == 0  # the corrupt file is skipped
    assert report["bad_samples"]["by_kind"] == {"invalid_json": 1, "unreadable_media": 2}
    assert VecEncoder.calls - before == 8
    again = json.loads(runner.invoke(app, ["cache", "build", str(plan), "--json"]).stdout)
    assert again["cached"] == 8 and again["computed"] == 0

    before = VecEncoder.calls
    res = runner.invoke(app, ["train", str(plan)])
    assert res.exit_code == 0, res.output
    assert "stage align: 2 steps" in res.output and "skipped 3 bad samples" in res.output
    assert VecEncoder.calls == before  # the prefilled cache served every item

    res = runner.invoke(app, ["eval", str(tmp_path / "run"), str(tmp_path / "train.jsonl"), "--json", "--limit", "4",
                              "--max-new-tokens", "2", "--metric", "contains"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 4 and out["metric"] == "contains" and 0.0 <= out["score"] <= 1.0

    res = runner.invoke(app, ["eval", str(tmp_path / "run"), str(tmp_path / "train.jsonl"), "--metric", "bleu"])
    assert res.exit_code != 0 and "unknown metric 'bleu'" in str(res.exception or res.output)


def test_evaluate_scores_generated_answers(tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch, colours, write_task) -> None:
    path = write_task(tmp_path, 8, bad_lines=True)
    batches = []

    def answer(conv) -> str:
        """Right (with noise the normaliser removes) for examples 0-5, wrong for the rest."""
        assert conv["messages"][-1]["role"] == "user"  # the prompt stops before the answer
        media = conv["messages"][0]["content"][0]["path"]
        if "corrupt" in media:
            return "purple"
        i = int(Path(media).name.split("-")[1].split(".")[0])  # media paths arrive resolved
        return f" {colours[i % 4].upper()}!" if i < 6 else "purple"

    def fake_generate(convs, max_new_tokens, do_sample, **kwargs):
        assert not do_sample and not kwargs.get("run_decoders", True)
        batches.append(len(convs))
        return type("R", (), {"texts": [answer(c) for c in convs]})()

    monkeypatch.setattr(tiny_model, "generate", fake_generate)
    out = evaluate(tiny_model, path, "exact", batch_size=3)
    # 8 examples + one whose file only fails when decoded (the fake never decodes): 9 scored, 6 right;
    # the bad JSON line and the missing file are skipped
    assert {k: out[k] for k in ("n", "score", "metric", "skipped")} == {"n": 9, "score": pytest.approx(6 / 9),
                                                                         "metric": "exact", "skipped": 2}
    # by expected answer: red/green right twice each (examples 0, 4 / 1, 5); blue/yellow wrong for 6, 7 and the
    # corrupt file (a red example answered purple)
    assert out["by_answer"] == {"red": {"n": 3, "score": pytest.approx(2 / 3), "wrong": {"purple": 1}},
                                "blue": {"n": 2, "score": 0.5, "wrong": {"purple": 1}},
                                "green": {"n": 2, "score": 1.0, "wrong": {}},
                                "yellow": {"n": 2, "score": 0.5, "wrong": {"purple": 1}}}
    assert "by_task" not in out  # no example names a meta.task
    assert batches == [3, 3, 3]
    assert evaluate(tiny_model, path, "wer", limit=2)["score"] == 0.0
    assert evaluate(tiny_model, path, "wer", limit=8)["score"] == pytest.approx(2 / 8)
