"""Length-bucketed batches (issue 18): every example once per epoch, a function of (seed, epoch), little padding,
and a mid-stage resume that continues exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from xmm.training.data import BucketBatchSampler, EpochBatchSampler

LENGTHS = [int(x) for x in torch.randint(10, 90, (203,), generator=torch.Generator().manual_seed(0))]


def _sampler(**kw: Any) -> BucketBatchSampler:
    return BucketBatchSampler(len(LENGTHS), 8, seed=5, length=LENGTHS.__getitem__, window=4, **kw)


def test_every_example_once_per_epoch_in_a_fixed_order() -> None:
    s = _sampler(drop_last=False)
    for epoch in (0, 1):
        s.set_position(epoch)
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        s.set_position(epoch, 5)
        assert list(s) == batches[5:]  # a resumed epoch continues where it stopped
    s.set_position(0)
    first = list(s)
    s.set_position(1)
    assert list(s) != first
    assert len(list(_sampler(drop_last=True))) == len(LENGTHS) // 8


def test_buckets_cut_the_padding() -> None:
    def padding(batches: list[list[int]]) -> int:
        return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)

    plain = EpochBatchSampler(len(LENGTHS), 8, seed=5)
    assert padding(list(_sampler())) < 0.5 * padding(list(plain))


@pytest.mark.parametrize("buckets", [2])
def test_a_bucketed_stage_resumes_bit_identically(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any,
                                                 write_task: Any, monkeypatch: pytest.MonkeyPatch,
                                                 buckets: int) -> None:
    from xmm.training import loop
    from xmm.training.loop import train

    write_task(tmp_path, 24)
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 8, "data": {"train": "train.jsonl",
                                                                              "buckets": buckets}})
    plan["checkpoint_every"] = 2
    train({**plan, "output_dir": "full"}, base_dir=tmp_path)
    real, calls = loop.optimizer_step, []

    def dies_at_step_6(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", dies_at_step_6)
    with pytest.raises(RuntimeError, match="killed"):
        train({**plan, "output_dir": "cut"}, base_dir=tmp_path)
    monkeypatch.setattr(loop, "optimizer_step", real)
    train({**plan, "output_dir": "cut"}, base_dir=tmp_path, resume=True)
    a = load_file(tmp_path / "full" / "checkpoints" / "stage-1-align" / "trained.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "stage-1-align" / "trained.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
