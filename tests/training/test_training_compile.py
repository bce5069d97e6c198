"""A stage's ``compile: true`` (issue 18): the LLM decoder under torch.compile gives the eager losses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "logs" / "train.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "stage_step" in r and "loss" in r]


@pytest.mark.slow
def test_compiled_stage_gives_the_eager_losses(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any,
                                               write_task: Any) -> None:
    from xmm.training.loop import train

    write_task(tmp_path, 16)
    runs = {}
    for compiled in (False, True):
        plan = tiny_plan(tmp_path, tiny_llm_dir, output_dir=f"run-{compiled}", stage={"compile": compiled,
                                                                                    "max_steps": 4})
        res = train(plan, base_dir=tmp_path)
        runs[compiled] = _losses(Path(res.output_dir))
        assert getattr(res.model, "pad_to_multiple_of", None) is None  # undone after the stage
        assert "forward" not in vars(res.model.llm.get_decoder())
    assert len(runs[True]) == len(runs[False]) == 4
    assert runs[True] == pytest.approx(runs[False], rel=1e-4, abs=1e-5)


def test_compile_pads_spliced_lengths_to_a_multiple() -> None:
    from xmm.model.splice import splice
    from xmm.training.compiled import compile_mode

    ids = torch.tensor([[5, 7, 6, 0], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = splice(torch.randn(2, 4, 3), ids, mask, [torch.randn(3, 3)], [7], pad_to_multiple_of=16)
    assert out.inputs_embeds.shape[1] == 16 and out.attention_mask.sum().item() == 5 + 2
    assert compile_mode(True, torch.device("cuda")) == "reduce-overhead"
    assert compile_mode(True, torch.device("cpu")) == "default"
    assert compile_mode("max-autotune", torch.device("cpu")) == "max-autotune"
