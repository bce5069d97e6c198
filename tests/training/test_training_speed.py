"""Cheaper hot paths of the trainer (issue 18) give what the plain forms gave: answer tokens without a per-row
loop; the guided-answer objective over the rows that matter."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from xmm.model import IGNORE_INDEX
from xmm.model.media import turn_contexts
from xmm.training.objectives import answer_tokens, candidate_rows


def _reference_answer_tokens(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = labels != IGNORE_INDEX
    lengths = keep.sum(1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    ids = torch.zeros(labels.shape[0], width, dtype=torch.long)
    mask = torch.zeros(labels.shape[0], width, dtype=torch.bool)
    for b in range(labels.shape[0]):
        n = int(lengths[b])
        ids[b, :n] = labels[b][keep[b]]
        mask[b, :n] = True
    return ids, mask


@pytest.mark.parametrize("seed", range(6))
def test_answer_tokens_equal_the_per_row_form(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(1, 50, (5, 9), generator=g)
    labels[torch.rand(5, 9, generator=g) < 0.6] = IGNORE_INDEX
    if seed == 0:
        labels[:] = IGNORE_INDEX  # no answer at all
    ids, mask = answer_tokens(SimpleNamespace(labels=labels))
    ref_ids, ref_mask = _reference_answer_tokens(labels)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)


def test_candidate_rows_hold_the_targets_and_fixed_negatives() -> None:
    targets = torch.tensor([5, 900, 5, 17])
    rows = candidate_rows(targets, 1000, 50)
    assert torch.equal(rows, rows.sort().values) and set(targets.tolist()) <= set(rows.tolist())
    assert 50 <= rows.numel() <= 53
    # the negatives are the same rows every step
    assert set(candidate_rows(torch.tensor([3]), 1000, 50).tolist()) - {3} == \
        set(candidate_rows(torch.tensor([4]), 1000, 50).tolist()) - {4}
    assert candidate_rows(torch.tensor([3]), 10, 50).tolist() == list(range(10))


def test_guided_answer_over_every_row_equals_the_full_vocabulary(tmp_path: Path, tiny_model: Any,
                                                                  write_task: Any) -> None:
    from xmm.model import MultimodalLM
    from xmm.objective import objective_step
    from xmm.training.objectives import guided_answer_loss

    write_task(tmp_path, 8)
    torch.manual_seed(0)
    model = MultimodalLM.from_config({**tiny_model.config.model_dump(), "modalities": {
        "vec": {"bridge": {"type": "guided-mlp", "guided_tokens": 2, "attn_dim": 16}}}}, llm=tiny_model.loaded_llm)
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    batch = model.collator()([{"messages": x["messages"], "base_dir": tmp_path} for x in lines])
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    with objective_step():
        full = guided_answer_loss(model, batch, None)
    with objective_step():
        every = guided_answer_loss(model, batch, None, negatives=vocab)
    with objective_step():
        some = guided_answer_loss(model, batch, None, negatives=8)
    assert full is not None and every is not None and some is not None
    assert torch.allclose(full, every, atol=1e-5) and some < full  # fewer rows to lose against


def test_a_convert_stage_over_sampled_rows_still_names_the_answer(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any,
                                                                  write_task: Any) -> None:
    """Trained against the batch's answer words and 256 fixed other rows (of 49k), the first guided token, read through the
    WHOLE embedding table, names the held-out answers."""
    from xmm.training.loop import train

    write_task(tmp_path, 32)
    held_out = write_task(tmp_path / "test", 8, seed=1, name="test.jsonl")
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={
        "name": "convert", "objectives": {"guided_answer": {"weight": 1.0, "params": {"negatives": 256}}},
        "max_steps": 60, "batch_size": 8, "optimizer": {"lr": 1e-2}})
    plan["model"]["modalities"]["vec"]["bridge"] = {"type": "guided-mlp", "guided_tokens": 2, "attn_dim": 16}
    model = train(plan, base_dir=tmp_path).model
    lines = [json.loads(x) for x in held_out.read_text().splitlines()]
    batch = model.collator()([{"messages": x["messages"], "base_dir": held_out.parent} for x in lines])
    table = model.llm.get_input_embeddings()
    with torch.no_grad():
        contexts = turn_contexts(table(batch.input_ids.to(model.device)), batch.media)
        embeds, _, _ = model.bridge_media(batch.media, model.encode_media(batch.media), contexts)
        guess = (torch.stack([e[-2] for e in embeds]).float() @ table.weight.float().T).argmax(-1)
    words = [model.tokenizer.decode([int(t)]).strip() for t in guess]
    answers = [x["messages"][1]["content"][0]["text"] for x in lines]
    assert sum(bool(w) and a.startswith(w) for w, a in zip(words, answers)) >= 6, list(zip(words, answers))


def test_train_cli_takes_threads(tmp_path: Path, tiny_llm_dir: Path, tiny_plan: Any, write_task: Any,
                                 write_plan: Any) -> None:
    from typer.testing import CliRunner
    from xmm.cli.main import app

    write_task(tmp_path, 8)
    plan = write_plan(tmp_path, tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 2}))
    runner = CliRunner()
    bad = runner.invoke(app, ["train", str(plan), "--threads", "lots"])
    assert bad.exit_code != 0 and "threads" in bad.output
    before = torch.get_num_threads()
    ok = runner.invoke(app, ["train", str(plan), "--threads", "1", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output[ok.output.index("{"):])["global_step"] == 2
    assert torch.get_num_threads() == before
