"""The prepared data path (issue 18): records tokenised once, media readied in the loader, batches as the plain
collator makes them, worker processes that change nothing about what is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from xmm.data import BadExample
from xmm.model.media import PREPROCESSED
from xmm.training.data import SkippedBatch, stage_dataset
from xmm.training.prepared import PreparedCollator, PreparedExample, PreparedExamples
from xmm.training.stage_data import loader_workers


def _records(root: Path, model: Any, n: int, write_task: Any, bad: bool = False) -> Any:
    write_task(root, n, bad_lines=bad)
    return stage_dataset(["train.jsonl"], model.specs, root)


def test_each_record_is_tokenised_once(tmp_path: Path, tiny_model: Any, write_task: Any) -> None:
    records = _records(tmp_path, tiny_model, 8, write_task)
    collator = tiny_model.collator(padding_side="right", load_media=False)
    calls: list[str] = []
    encode = collator.encode_example

    def counting(example: Any, index: int = 0) -> Any:
        calls.append(example["source"])
        return encode(example, index)

    collator.encode_example = counting  # type: ignore[method-assign]
    prepared = PreparedExamples(records, collator)
    collate = PreparedCollator(collator, dict(tiny_model.encoders.items()))
    for _ in range(3):  # three epochs
        collate([prepared[i] for i in range(8)])
    assert sorted(calls) == sorted(records[i]["source"] for i in range(8))


def test_batches_equal_the_plain_collator(tmp_path: Path, tiny_model: Any, write_task: Any) -> None:
    records = _records(tmp_path, tiny_model, 8, write_task)
    collator = tiny_model.collator(padding_side="right", load_media=False)
    prepared = PreparedExamples(records, collator)
    collate = PreparedCollator(collator, dict(tiny_model.encoders.items()))
    order = [5, 2, 7, 0]
    for _ in range(2):  # the second time from the memo
        ours = collate([prepared[i] for i in order])
        plain = tiny_model.collator(padding_side="right", load_media=True)([records[i] for i in order])
        for name in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(getattr(ours, name), getattr(plain, name))
        assert [(it.batch_index, it.position, it.context) for it in ours.media] == \
               [(it.batch_index, it.position, it.context) for it in plain.media]
        assert ours.answer_tokens == int((plain.labels != -100).sum())
        # the encoder's input is prepared here, in the loader, exactly as the encoder would make it
        enc = tiny_model.encoders["vec"]
        for a, b in zip(ours.media, plain.media):
            ready = getattr(a, PREPROCESSED)
            assert ready.keys() == enc.preprocess(b.load()).keys()
            assert all(torch.equal(ready[k], enc.preprocess(b.load())[k]) for k in ready)
        # and the model encodes the same features from it
        got = tiny_model.encode_media(ours.media)
        want = tiny_model.encode_media(plain.media)
        assert all(torch.equal(x.features, y.features) for x, y in zip(got, want))


def test_small_inputs_are_kept_across_epochs(tmp_path: Path, tiny_model: Any, write_task: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    records = _records(tmp_path, tiny_model, 4, write_task)
    collator = tiny_model.collator(padding_side="right", load_media=False)
    prepared = PreparedExamples(records, collator)
    collate = PreparedCollator(collator, dict(tiny_model.encoders.items()))
    collate([prepared[i] for i in range(4)])
    assert all(isinstance(prepared[i], PreparedExample) and prepared[i].inputs[0] is not None for i in range(4))
    from xmm.model.messages import MediaItem

    def no_load(self: Any) -> Any:
        raise AssertionError("decoded again")

    monkeypatch.setattr(MediaItem, "load", no_load)
    batch = collate([prepared[i] for i in range(4)])
    assert all(getattr(it, PREPROCESSED) is not None for it in batch.media)


def test_bad_records_are_skipped_or_stop_the_run(tmp_path: Path, tiny_model: Any, write_task: Any) -> None:
    from xmm.errors import TrainingError

    records = _records(tmp_path, tiny_model, 2, write_task, bad=True)
    collator = tiny_model.collator(padding_side="right", load_media=False)
    prepared = PreparedExamples(records, collator)
    items = [prepared[i] for i in range(len(records))]
    assert sum(isinstance(x, BadExample) for x in items) >= 2  # the line that is not JSON, the missing file
    batch = PreparedCollator(collator, dict(tiny_model.encoders.items()))(items)
    kinds = sorted(k for k, _, _ in batch.skipped)
    assert len(batch) == 2 and "unreadable_media" in kinds and len(kinds) == 3
    assert isinstance(PreparedCollator(collator, {})([x for x in items if isinstance(x, BadExample)]), SkippedBatch)
    with pytest.raises(TrainingError, match="on_bad_sample: fail"):
        PreparedCollator(collator, dict(tiny_model.encoders.items()), on_bad_sample="fail")(items)


def test_worker_processes_train_the_same_weights(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any,
                                                  write_task: Any) -> None:
    from xmm.training.loop import train

    write_task(tmp_path, 16)
    digests = []
    for workers in (0, 2):
        plan = tiny_plan(tmp_path, tiny_llm_dir, output_dir=f"run-{workers}",
                         stage={"data": {"train": "train.jsonl", "num_workers": workers}, "max_steps": 5})
        res = train(plan, base_dir=tmp_path)
        digests.append(res.stages[0]["rank_checksums"])
    assert digests[0] == digests[1]


def test_loader_workers_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    import xmm.training.stage_data as sd

    monkeypatch.setattr(sd, "available_cores", lambda: 16)
    assert loader_workers(3, torch.device("cpu")) == 3
    assert loader_workers("auto", torch.device("cuda")) == 8
    monkeypatch.setattr(torch, "get_num_threads", lambda: 15)
    assert loader_workers("auto", torch.device("cpu")) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert loader_workers("auto", torch.device("cpu")) == 0
    monkeypatch.setattr(sd, "available_cores", lambda: 2)
    assert loader_workers("auto", torch.device("mps")) == 1


def test_records_say_how_long_the_step_waited_for_data(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any,
                                                       write_task: Any) -> None:
    from xmm.training.logging import read_log
    from xmm.training.loop import train

    write_task(tmp_path, 16)
    train(tiny_plan(tmp_path, tiny_llm_dir), base_dir=tmp_path)
    steps = [r for r in read_log(tmp_path / "run" / "logs" / "train.jsonl") if "stage_step" in r and "loss" in r]
    assert len(steps) == 6
    assert all(0.0 <= r["data_wait_s"] <= r["step_time_s"] and 0.0 <= r["data_wait_frac"] <= 1.0 for r in steps)


def test_losses_are_read_a_step_late_on_an_accelerator() -> None:
    """On a device other than the CPU a logging step's losses are read after the next step is queued; the last
    step of a stage is read at once, so the stage's summary has it."""
    from types import SimpleNamespace

    from xmm.training.reporting import StageReporter

    reads: list[int] = []

    class Losses:
        def __init__(self, step: int) -> None:
            self.step = step

        def read(self) -> dict[str, float]:
            reads.append(self.step)
            return {"loss": float(self.step)}

    logged: list[dict[str, Any]] = []
    run = SimpleNamespace(plan=SimpleNamespace(log_every=1, stages=[None]), main=True, bad=SimpleNamespace(total=0),
                          accelerator=SimpleNamespace(device=torch.device("meta"), num_processes=1))
    stage = SimpleNamespace(step=0, total_steps=3, name="s", index=0, samples_per_step=4, resumed=False,
                            batches=SimpleNamespace(epoch=0, wait_s=0.0), data=SimpleNamespace(dataset=[0] * 8),
                            optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}]),
                            selection=SimpleNamespace(names=["w"], num_parameters=1))
    logger = SimpleNamespace(log=logged.append, event=lambda *a, **k: None)
    state = SimpleNamespace(global_step=0)
    reporter = StageReporter(run, logger, stage, state)  # type: ignore[arg-type]
    reporter.started()
    for step in (1, 2, 3):
        reporter.step_begins()
        stage.step, state.global_step = step, step
        reporter.step_done(Losses(step))  # type: ignore[arg-type]
        assert reads == list(range(1, step)) + ([3] if step == 3 else [])
    reporter.close()
    assert [r["stage_step"] for r in logged] == [1, 2, 3] and [r["loss"] for r in logged] == [1.0, 2.0, 3.0]
    assert reporter.last == {"loss": 3.0}


def test_features_stay_on_the_device_within_the_budget(tmp_path: Path, tiny_model: Any, write_task: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from xmm.training.cache import CachedFeatureProvider, FeatureCache

    records = _records(tmp_path, tiny_model, 4, write_task)
    batch = tiny_model.collator(load_media=True)([records[i] for i in range(4)])
    cache = FeatureCache(tmp_path / "cache")
    provider = CachedFeatureProvider(tiny_model, cache, compute=tiny_model.encode_media)
    provider.warm()
    first = provider(batch.media)  # computed, stored, kept
    monkeypatch.setattr(cache, "get", lambda key: pytest.fail("read from the shards again"))
    second = provider(batch.media)
    assert all(torch.equal(a.features, b.features) for a, b in zip(first, second))
    monkeypatch.undo()
    cache.flush()
    tight = CachedFeatureProvider(tiny_model, cache, compute=tiny_model.encode_media, resident_bytes=0)
    third = tight(batch.media)  # nothing kept: served from the shards
    assert not tight._resident and cache.hits >= 4
    assert all(torch.equal(a.features, b.features) for a, b in zip(first, third))


def test_stages_reading_the_same_data_prepare_it_once(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any,
                                                      write_task: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from xmm.model.collator import MultimodalCollator
    from xmm.training.loop import train

    write_task(tmp_path, 8)
    calls: list[str] = []
    encode = MultimodalCollator.encode_example

    def counting(self: Any, example: Any, index: int = 0) -> Any:
        calls.append(example["source"])
        return encode(self, example, index)

    monkeypatch.setattr(MultimodalCollator, "encode_example", counting)
    stage = {"max_steps": 4, "data": {"train": "train.jsonl", "num_workers": 0}}
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage=stage)
    plan["stages"].append({**plan["stages"][0], "name": "again"})
    train(plan, base_dir=tmp_path)
    assert len(calls) == len(set(calls)) == 8  # two stages, 4 steps of 4 each: every record tokenised once


def test_a_batch_leaves_the_worker_as_a_few_buffers(tmp_path: Path, tiny_model: Any, write_task: Any) -> None:
    """Every item's preprocessed tensors are views of one buffer per dtype (a batch of many small tensors would take
    one file descriptor each to cross processes), with the same values; the kept inputs are not those views."""
    records = _records(tmp_path, tiny_model, 8, write_task)
    collator = tiny_model.collator(padding_side="right", load_media=False)
    prepared = PreparedExamples(records, collator)
    collate = PreparedCollator(collator, dict(tiny_model.encoders.items()))
    batch = collate([prepared[i] for i in range(8)])
    assert len(batch.media) == 8
    tensors = [t for it in batch.media for t in getattr(it, PREPROCESSED).values()]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) <= len({t.dtype for t in tensors}) < len(tensors)
    for i, it in enumerate(batch.media):
        kept = prepared[i].inputs[0]
        assert all(torch.equal(getattr(it, PREPROCESSED)[k], kept[k]) for k in kept)
        assert all(kept[k].untyped_storage().data_ptr() != getattr(it, PREPROCESSED)[k].untyped_storage().data_ptr()
                   for k in kept)
