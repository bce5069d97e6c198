"""What each process reads from a shared feature cache does not depend on the other processes' timing or on where a
run was resumed (issue 18): of its own stage a process reads only its own writes, an evaluation's never, and an item
several processes computed from its own copy."""

from __future__ import annotations

from pathlib import Path

import torch
from xmm.encoder import EncoderOutput
from xmm.training.cache import FeatureCache


def _out(value: float) -> EncoderOutput:
    return EncoderOutput(torch.full((1, 2, 3), value), torch.ones(1, 2, dtype=torch.bool))


def _scope(stage: str, rank: int) -> dict[str, object]:
    return {"run": "/runs/a", "stage": stage, "rank": rank}


def _value(cache: FeatureCache, key: str) -> float | None:
    got = cache.get(key)
    return None if got is None else float(got.features[0, 0, 0])


def test_a_stage_reads_only_its_own_writes_of_that_stage(tmp_path: Path) -> None:
    rank0, rank1 = FeatureCache(tmp_path, writer="r0"), FeatureCache(tmp_path, writer="r1")
    rank0.enter_scope(_scope("align", 0))
    rank1.enter_scope(_scope("align", 1))
    rank0.put("x", _out(1.0))
    rank0.flush()
    rank1.refresh()
    assert "x" not in rank1 and not rank1.has("x", refresh_after=0.0)  # rank 1 computes x itself, as on any run
    rank1.put("x", _out(2.0))
    rank1.flush()
    # the next stage: both see every earlier write, each its own copy of x
    rank0.enter_scope(_scope("tune", 0))
    rank1.enter_scope(_scope("tune", 1))
    assert _value(rank0, "x") == 1.0 and _value(rank1, "x") == 2.0
    # a process started later (a resumed run) makes the same choices
    again = FeatureCache(tmp_path, writer="r1-resumed")
    again.enter_scope(_scope("tune", 1))
    assert _value(again, "x") == 2.0
    other = FeatureCache(tmp_path, writer="r2")
    other.enter_scope(_scope("tune", 2))
    assert _value(other, "x") in (1.0, 2.0)
    assert _value(FeatureCache(tmp_path, writer="r2b"), "x") == _value(other, "x")  # same pick every time


def test_a_resumed_process_reads_its_own_earlier_writes_of_the_stage(tmp_path: Path) -> None:
    first = FeatureCache(tmp_path, writer="attempt1")
    first.enter_scope(_scope("align", 0))
    first.put("y", _out(3.0))
    first.flush()  # a checkpoint flushed it, then the run died
    resumed = FeatureCache(tmp_path, writer="attempt2")
    resumed.enter_scope(_scope("align", 0))
    assert _value(resumed, "y") == 3.0


def test_what_an_evaluation_encodes_is_never_served_to_training(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, writer="r0")
    cache.enter_scope(_scope("align", 0))
    with cache.evaluation():
        cache.put("z", _out(4.0))
        assert _value(cache, "z") == 4.0  # the evaluation itself uses it
    assert "z" not in cache and cache.scope == _scope("align", 0)
    cache.enter_scope(_scope("tune", 0))
    assert "z" not in cache
    untagged = FeatureCache(tmp_path, writer="build")  # `xmm cache build`, an evaluation outside a run: reads all
    assert _value(untagged, "z") == 4.0
    untagged.put("w", _out(5.0))
    untagged.flush()
    cache.enter_scope(_scope("later", 0))
    assert _value(cache, "w") == 5.0
