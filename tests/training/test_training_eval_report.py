"""Evaluation you can read: prediction records, the breakdown by task and by expected answer, the confusion PNG,
the off-task probe, and `xmm eval --predictions` on a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from xmm.cli.main import app
from xmm.training.eval_report import (
    breakdown,
    confusion,
    format_report,
    plot_confusion,
    prediction_record,
    render_input,
    write_predictions,
)
from xmm.training.evaluate import probe_off_task

IMAGE_PROMPT = [{"role": "user", "content": [{"type": "image", "path": "img/1.png"}, {"type": "text", "text": "Colour?"}]}]


def _preds(rows: list[tuple[str | None, str, str]], metric: str = "exact") -> list[dict]:
    return [prediction_record(f"m.jsonl:{i + 1}", task, IMAGE_PROMPT, expected, answer, metric)
            for i, (task, expected, answer) in enumerate(rows)]


def test_prediction_record_fields_and_input_rendering() -> None:
    rec = prediction_record("t.jsonl:3", "colour", IMAGE_PROMPT, "Red", " red.", "exact")
    assert rec == {"source": "t.jsonl:3", "task": "colour", "input": "<image: img/1.png> Colour?", "expected": "Red",
                   "answer": " red.", "correct": True}
    wer = prediction_record("t.jsonl:4", None, IMAGE_PROMPT, "a b c", "a x c", "wer")
    assert wer["correct"] is False and (wer["word_errors"], wer["words"]) == (1, 3)
    assert prediction_record("s", None, IMAGE_PROMPT, "red", "it is red", "contains")["correct"] is True
    two_turns = [{"role": "system", "content": "Be brief."}, *IMAGE_PROMPT]
    assert render_input(two_turns) == "system: Be brief. | user: <image: img/1.png> Colour?"


def test_breakdown_by_task_and_by_expected_answer() -> None:
    preds = _preds([("colour", "red", "red"), ("colour", "red", "blue"), ("colour", "blue", "blue"),
                    ("count", "two", "two"), ("count", "three", "two"), ("count", "three", "Two!")])
    out = breakdown(preds, "exact")
    assert out["by_task"] == {"colour": {"n": 3, "score": pytest.approx(2 / 3)},
                              "count": {"n": 3, "score": pytest.approx(1 / 3)}}
    assert out["by_answer"] == {"red": {"n": 2, "score": 0.5, "wrong": {"blue": 1}},
                                "three": {"n": 2, "score": 0.0, "wrong": {"two": 2}},
                                "blue": {"n": 1, "score": 1.0, "wrong": {}},
                                "two": {"n": 1, "score": 1.0, "wrong": {}}}
    assert list(out["by_answer"])[:2] == ["red", "three"]  # most frequent expected answers first
    assert "by_answer" not in breakdown(_preds([(None, "a b", "a b")], "wer"), "wer")


def test_confusion_tables_and_png(tmp_path: Path) -> None:
    preds = _preds([("colour", "red", "red"), ("colour", "red", "blue"), ("colour", "blue", "purple"),
                    ("count", "two", "two")])
    tables = confusion(preds)
    labels, counts = tables["colour"]
    assert labels == ["blue", "red", "(other)"]
    assert counts == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]  # purple is no expected answer: (other)
    assert tables["count"] == (["two", "(other)"], [[1, 0], [0, 0]])
    pytest.importorskip("matplotlib")
    png = plot_confusion(preds, tmp_path / "c.png")
    assert png == tmp_path / "c.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_confusion([], tmp_path / "none.png") is None


def test_predictions_file_and_report_text(tmp_path: Path) -> None:
    preds = _preds([("colour", "red", "red"), ("colour", "blue", "rouge")])
    path = write_predictions(preds, tmp_path / "p.jsonl")
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == preds
    result = {"n": 2, "score": 0.5, "metric": "exact", "skipped": 1, **breakdown(preds, "exact"),
              "probe": {"n": 4, "label_answers": 3, "label_rate": 0.75, "labels": 2,
                        "by_prompt": {"Describe this image in one sentence.": {"n": 2, "label_answers": 2,
                                                                                "example": "red"}}}}
    text = format_report(result)
    assert text.splitlines()[0] == "exact: 0.5000 on 2 examples (1 skipped)"
    assert "by task:" in text and "  colour     2   0.500" in text
    assert "  blue         1   0.000  'rouge' x1" in text
    assert "off-task probe: 3/4" in text and "--mix-general" in text  # a high rate says what to do about it


def test_probe_counts_training_answers_to_off_task_prompts(tmp_path: Path, tiny_model, monkeypatch, write_task,
                                                           colours) -> None:
    path = write_task(tmp_path, 6)
    asked = []

    def fake_generate(convs, max_new_tokens, do_sample, **kwargs):
        out = []
        for conv in convs:
            (msg,) = conv["messages"]
            assert msg["content"][0]["type"] == "vec" and msg["content"][-1]["type"] == "text"
            prompt = msg["content"][-1]["text"]
            asked.append(prompt)
            out.append("Blue." if prompt.startswith("Describe") else "The capital of France is Paris.")
        return type("R", (), {"texts": out})()

    monkeypatch.setattr(tiny_model, "generate", fake_generate)
    res = probe_off_task(tiny_model, path, examples=4, batch_size=3)
    assert res["n"] == 8 and res["label_answers"] == 4 and res["label_rate"] == 0.5 and res["labels"] == 4
    # the prompt names the attached item's modality
    assert res["by_prompt"]["Describe this vec in one sentence."] == {"n": 4, "label_answers": 4, "example": "Blue."}
    assert "Describe this vec in one sentence." in asked
    assert res["by_prompt"]["What is the capital of France?"]["label_answers"] == 0


def test_eval_command_writes_predictions_confusion_and_breakdown(tmp_path: Path, tiny_llm_dir: Path, tiny_plan,
                                                                write_plan, write_task) -> None:
    write_task(tmp_path, 8)
    plan = write_plan(tmp_path, tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 1}))
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(plan)]).exit_code == 0
    preds = tmp_path / "out" / "preds.jsonl"
    res = runner.invoke(app, ["eval", str(tmp_path / "run"), str(tmp_path / "train.jsonl"), "--predictions",
                              str(preds), "--max-new-tokens", "2", "--probe", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"source", "task", "input", "expected", "answer", "correct"}
    assert rows[0]["input"].startswith("<vec: ") and rows[0]["input"].endswith("Which colour?")
    assert res.stdout.startswith("exact: ") and "by expected answer:" in res.stdout
    assert "off-task probe: " in res.stdout and f"predictions: {preds}" in res.stdout
    if (tmp_path / "out" / "preds.confusion.png").exists():  # the plot extra is installed
        assert f"confusion: {tmp_path / 'out' / 'preds.confusion.png'}" in res.stdout

    # a config is a checkpoint too: the untrained baseline, with a warning
    res = runner.invoke(app, ["eval", str(plan), str(tmp_path / "train.jsonl"), "--json", "--limit", "2",
                              "--max-new-tokens", "1", "--probe", "0"])
    assert res.exit_code == 0, res.output
    assert "untrained" in res.stderr and json.loads(res.stdout)["n"] == 2
