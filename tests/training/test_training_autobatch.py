"""``batch_size: auto`` (issue 18): the largest micro-batch within the memory budget, the global batch kept by
gradient accumulation, the choice kept for a resumed stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from xmm.errors import ConfigError, TrainingError
from xmm.training.autobatch import PeakBytes, fit_micro_batch, resolve_batch, split_global


def _mlp_step(width: int = 256) -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.GELU(), torch.nn.Linear(width, 4))

    def step(b: int) -> None:
        net(torch.randn(b, 64)).square().sum().backward()
        net.zero_grad(set_to_none=True)

    return step


def _peak(step: Any, b: int) -> int:
    with PeakBytes() as meter:
        step(b)
    return meter.peak


def test_peak_bytes_grow_with_the_batch() -> None:
    step = _mlp_step()
    small, large = _peak(step, 8), _peak(step, 64)
    # each example keeps at least its hidden activations (256 + 256 floats) alive for the backward pass
    assert large - small >= 56 * 512 * 4


@pytest.mark.parametrize("budget_kib", [300, 1200, 4000])
def test_the_fit_is_the_largest_batch_within_the_budget(budget_kib: int) -> None:
    step = _mlp_step()
    budget = budget_kib * 1024
    fit = fit_micro_batch(step, torch.device("cpu"), budget, cap=4096)
    assert _peak(step, fit) <= budget
    assert _peak(step, int(fit * 1.2) + 8) > budget  # not much more would fit
    with pytest.raises(TrainingError, match="budget"):
        fit_micro_batch(step, torch.device("cpu"), 1024, cap=4096)
    assert fit_micro_batch(step, torch.device("cpu"), budget, cap=3) <= 3


def test_the_global_batch_splits_into_equal_micro_batches() -> None:
    assert split_global(64, 100) == (64, 1)
    assert split_global(64, 20) == (16, 4)
    assert split_global(48, 20) == (16, 3)
    assert split_global(7, 3) == (1, 7)


def test_plan_fields() -> None:
    from xmm.training.plan import StageConfig

    base = {"trainable": ["bridge:*"], "data": {"train": "t"}, "max_steps": 1}
    cfg = StageConfig.model_validate({**base, "batch_size": "auto", "global_batch_size": 32})
    assert resolve_batch(cfg, 1, 12).batch_size == 8 and resolve_batch(cfg, 1, 12).grad_accum == 4
    assert resolve_batch(cfg.model_copy(update={"global_batch_size": None}), 2, 12).batch_size == 24
    with pytest.raises(ValueError, match="global_batch_size goes with batch_size: auto"):
        StageConfig.model_validate({**base, "batch_size": 8, "global_batch_size": 32})
    with pytest.raises(ValueError):
        StageConfig.model_validate({**base, "batch_size": "big"})
    from xmm.training.plan import load_plan

    with pytest.raises(ConfigError, match="stages.0"):
        load_plan({"model": {"llm": "x", "modalities": {}}, "stages": [{**base, "batch_size": 0}]},
                  import_plugins=False)


def test_auto_batch_keeps_the_global_batch_and_trains_as_one_batch(tmp_path: Path, tiny_llm_dir: Path,
                                                                     tiny_plan: Any, write_task: Any) -> None:
    """With a budget too small for 16 examples at once, an auto micro-batch with accumulation trains what one
    batch of 16 trains (up to rounding), and the choice is recorded for a resumed stage."""
    from safetensors.torch import load_file
    from xmm.training.loop import train

    write_task(tmp_path, 32)
    fixed = tiny_plan(tmp_path, tiny_llm_dir, output_dir="fixed", stage={"batch_size": 16, "max_steps": 3})
    train(fixed, base_dir=tmp_path)
    auto = tiny_plan(tmp_path, tiny_llm_dir, output_dir="auto", stage={
        "batch_size": "auto", "global_batch_size": 16, "memory_budget_gb": 0.0005, "max_steps": 3})
    res = train(auto, base_dir=tmp_path)
    choice = json.loads((tmp_path / "auto" / "batch_sizes.json").read_text())["align"]
    assert choice["batch_size"] * choice["grad_accum"] == 16 and choice["grad_accum"] > 1
    start = [json.loads(x) for x in (tmp_path / "auto" / "logs" / "train.jsonl").read_text().splitlines()]
    assert res.global_step == 3 and any(r.get("event") == "stage_start" for r in start)
    a = load_file(tmp_path / "fixed" / "checkpoints" / "stage-1-align" / "trained.safetensors")
    b = load_file(tmp_path / "auto" / "checkpoints" / "stage-1-align" / "trained.safetensors")
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_resumed_stage_keeps_the_first_attempts_choice(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from xmm.training.autobatch import BATCH_SIZES, auto_batch_stage, write_choice
    from xmm.training.plan import StageConfig

    cfg = StageConfig.model_validate({"name": "s", "trainable": ["bridge:*"], "data": {"train": "t"}, "max_steps": 1,
                                      "batch_size": "auto", "global_batch_size": 32})
    write_choice(tmp_path / BATCH_SIZES, cfg.model_copy(update={"batch_size": 8, "grad_accum": 4}))
    run = SimpleNamespace(plan=SimpleNamespace(output_path=tmp_path), accelerator=None)
    got = auto_batch_stage(run, 0, cfg, resuming=True)  # no trial runs: the run has no model at all
    assert (got.batch_size, got.grad_accum) == (8, 4)
