"""A plan trains on LLaVA / ShareGPT / parquet sources as they are; bad records are skipped and counted when reached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from xmm.data import DataSource
from xmm.errors import ConfigError, TrainingError
from xmm.training import train
from xmm.training.plan import load_plan


def _plan(root: Path, llm_dir: Path, train_entries: list[Any], **stage: Any) -> Path:
    plan = {
        "model": {"llm": str(llm_dir), "modalities": {"image": {}, "audio": {}, "device": {}}, "autocast": "off"},
        "output_dir": "run", "cache_dir": "cache", "seed": 1,
        "stages": [{"name": "align", "trainable": ["bridge:*"], "data": {"train": train_entries, "shuffle": False},
                    "objectives": {"lm": 1.0}, "max_steps": 2, "batch_size": 8, "mixed_precision": "no",
                    **stage}],
    }
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_plan_data_entries(corpus_dir: Path, tmp_path: Path) -> None:
    path = _plan(tmp_path, tmp_path, ["a.jsonl", {"path": "b.json", "format": "llava", "media_root": "img"}])
    plan = load_plan(path)
    entries = plan.stages[0].data.train
    assert entries[0] == "a.jsonl" and isinstance(entries[1], DataSource) and entries[1].media_root == "img"
    assert "limits" not in yaml.safe_load(plan.to_yaml())["stages"][0]["data"]["train"][1]
    path.write_text(path.read_text().replace("format: llava", "format: lava"))
    with pytest.raises(ConfigError, match="format"):
        load_plan(path)


@pytest.mark.parametrize("feature_cache", [False, True])
def test_training_reads_formats_lazily(feature_cache: bool, corpus_dir: Path, tmp_path: Path, registry: Any,
                                       tiny_llm_dir: Path) -> None:
    bad = [json.dumps({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
                       "image": "../../etc/passwd"}),
           "{broken"]
    good = [json.dumps({"image": f"img/{i}.png", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                                    {"from": "gpt", "value": "red"}]}) for i in range(6)]
    (tmp_path / "first.jsonl").write_text("\n".join(bad + good) + "\n")
    entries = [{"path": "first.jsonl", "media_root": str(corpus_dir / "media")},
               {"path": str(corpus_dir / "llava.json"), "format": "llava", "media_root": str(corpus_dir / "media")},
               {"path": str(corpus_dir / "parquet"), "format": "hf"}]
    result = train(_plan(tmp_path, tiny_llm_dir, entries, feature_cache=feature_cache))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.global_step == 2
    # only the first batch met the two bad records (no shuffle): counted when reached, each once
    assert summary["bad_samples"]["by_kind"] == {"unsafe_path": 1, "invalid_json": 1}
    assert any("first.jsonl:1" in m and "image" in m for m in summary["bad_samples"]["examples"])
    start = [json.loads(line) for line in (tmp_path / "run" / "logs" / "train.jsonl").read_text().splitlines()
             if '"stage_start"' in line]
    assert start[0]["examples"] == 8 + 200 + 200


def test_fail_policy_stops_at_the_first_bad_record(tmp_path: Path, registry: Any, tiny_llm_dir: Path) -> None:
    lines = [json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})] * 8
    lines[3] = "{broken"
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    path = _plan(tmp_path, tiny_llm_dir, ["m.jsonl"])
    path.write_text(path.read_text() + "on_bad_sample: fail\n")
    with pytest.raises(TrainingError, match=r"m.jsonl:4: .*on_bad_sample: fail"):
        train(path)
