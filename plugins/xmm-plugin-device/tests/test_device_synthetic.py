"""The telemetry generator: manifests in the trainer's format, answers from the rules, splits that do not leak."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import pytest
from xmm_plugin_device import rules
from xmm_plugin_device.commands import parse_command
from xmm_plugin_device.loading import load_window
from xmm_plugin_device.synthetic import ACTIONS, QUESTIONS, TASKS, generate, sample_example


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_format_and_answers_match_the_files(tmp_path):
    report = generate(tmp_path, n=60, seed=3, split="train")
    rows = _lines(report.manifest)
    assert len(rows) == 60 and report.manifest == tmp_path / "train.jsonl"
    suffixes = Counter()
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        media, question = user["content"]
        assert media["type"] == "device" and question["type"] == "text"
        path = tmp_path / media["path"]  # relative to the manifest
        suffixes[path.suffix] += 1
        window = load_window(path)
        task, answer = row["meta"]["task"], assistant["content"][0]["text"]
        assert answer == rules.answer(task, window)  # the label is a function of the file alone
        assert window.fingerprint() == row["meta"]["fingerprint"]
        assert question["text"] in QUESTIONS[task]
        assert 1 <= len(window) <= 8
        if task == "action":
            parse_command(answer)
    assert set(suffixes) == {".json", ".jsonl"}
    captions = _lines(report.captions)
    assert len(captions) == 60 and captions[0]["messages"][0]["content"] == rows[0]["messages"][0]["content"][:1]
    assert captions[0]["messages"][1]["content"][0]["text"] == rules.caption(load_window(tmp_path / rows[0]["messages"][0]["content"][0]["path"]))


def test_answers_never_leak_into_questions():
    answers = {"yes", "no", "wifi", "4g", "5g", "3g", "2g", "ethernet", "none"}
    for task, questions in QUESTIONS.items():
        for q in questions:
            words = set(q.lower().replace("?", " ").replace(".", " ").split())
            assert not (words & (answers - {"yes", "no"})), (task, q)
    rng = random.Random(0)
    by_question = {}
    for _ in range(300):
        ex = sample_example(rng)
        by_question.setdefault((ex.task, ex.question), set()).add(ex.answer)
    # every question is asked with different answers: the text alone cannot give the answer away
    assert all(len(a) > 1 for a in by_question.values())


def test_labels_are_balanced_and_chance_is_low(tmp_path):
    report = generate(tmp_path, n=400, seed=1, split="train", captions=False)
    assert report.captions is None and not (tmp_path / "train_captions.jsonl").exists()
    assert set(report.answers) == set(TASKS)
    chance = report.majority_accuracy()
    assert chance["overall"] < 0.5
    assert chance["action"] < 0.3 and chance["network"] < 0.3
    for task in ("battery_low", "charging", "overheating", "draining"):
        assert 0.35 < report.answers[task]["yes"] / sum(report.answers[task].values()) < 0.65
    actions = {parse_command(a).action for a in report.answers["action"]}
    assert actions == set(ACTIONS)


def test_values_keep_clear_of_thresholds():
    rng = random.Random(5)
    for _ in range(300):
        s = sample_example(rng).window.latest
        assert min(abs(s.battery.level - c) for c in (rules.BATTERY_LOW, rules.BATTERY_CRITICAL, rules.BRIGHT_BATTERY)) >= 2
        assert abs(s.temperature - rules.OVERHEAT_C) >= 1.4  # unit conversions round to 0.01
        assert abs(s.storage.free_percent - rules.STORAGE_FREE_MIN) >= 0.9


def test_deterministic_and_splits_are_disjoint(tmp_path):
    a = generate(tmp_path / "a", n=80, seed=1, split="train")
    b = generate(tmp_path / "b", n=80, seed=1, split="train")
    assert a.manifest.read_text() == b.manifest.read_text()
    test = generate(tmp_path / "a", n=80, seed=2, split="test")
    same_seed = generate(tmp_path / "c", n=80, seed=1, split="test")
    train_fp = {r["meta"]["fingerprint"] for r in _lines(a.manifest)}
    assert not train_fp & {r["meta"]["fingerprint"] for r in _lines(test.manifest)}
    assert not train_fp & {r["meta"]["fingerprint"] for r in _lines(same_seed.manifest)}
    with pytest.raises(ValueError, match="unknown device tasks"):
        generate(tmp_path, n=2, tasks=["weather"])


def test_cli_writes_a_split(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xmm_plugin_device.synthetic", str(tmp_path), "--n", "12", "--seed", "4",
         "--split", "test", "--tasks", "network,action"],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(out.stdout)
    assert report["n"] == 12 and set(report["answers"]) <= {"network", "action"}
    assert len(_lines(tmp_path / "test.jsonl")) == 12 and (tmp_path / "test_captions.jsonl").exists()
    bad = subprocess.run([sys.executable, "-m", "xmm_plugin_device.synthetic", str(tmp_path), "--n", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "n must be >= 1" in bad.stderr


def test_action_weights_oversample_a_command_and_leave_default_data_unchanged(tmp_path):
    plain = generate(tmp_path / "plain", n=300, seed=3, split="train", tasks=["action"], captions=False)
    weighted = generate(tmp_path / "w", n=300, seed=3, split="train", tasks=["action"], captions=False,
                        action_weights={"close_app": 6, "no_action": 0})

    def closes(report):
        return sum(c for a, c in report.answers["action"].items() if a.startswith("close_app"))

    assert closes(weighted) > 2.5 * closes(plain)
    assert "no_action()" in plain.answers["action"] and "no_action()" not in weighted.answers["action"]
    # None and "no weights given" draw the same stream: held-out data generated without weights stays as it was
    again = generate(tmp_path / "again", n=300, seed=3, split="train", tasks=["action"], captions=False, action_weights=None)
    assert again.manifest.read_text() == plain.manifest.read_text()
    with pytest.raises(ValueError, match="unknown commands"):
        generate(tmp_path, n=2, action_weights={"reboot": 2})
    with pytest.raises(ValueError, match="positive total"):
        generate(tmp_path, n=2, action_weights=dict.fromkeys(ACTIONS, 0.0))
    with pytest.raises(ValueError, match="unknown commands"):  # sample_example checks them too
        sample_example(random.Random(0), "action", action_weights={"reboot": 2})
    bad = subprocess.run([sys.executable, "-m", "xmm_plugin_device.synthetic", str(tmp_path), "--n", "2",
                          "--action-weights", "close_app"], capture_output=True, text=True)
    assert bad.returncode == 2 and "CMD=NUMBER" in bad.stderr
