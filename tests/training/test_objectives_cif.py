"""``cif_tokens``: X-LLM's convert stage for a CIF bridge trains without any LLM layer and makes the fired vectors
read as the answer's tokens through the LLM's own embedding table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from xmm.model import MultimodalLM
from xmm.training import train
from xmm.training.data import BadSamples, read_manifest
from xmm.training.objectives import get_objective
from xmm.training.objectives_cif import read_out, transcript_tokens

CFORMER = {"type": "cformer", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "cif_channels": 16, "dropout": 0.0}


def test_cif_tokens_is_a_core_objective_that_needs_no_llm_output() -> None:
    obj = get_objective("cif_tokens")
    assert not obj.needs_output and not obj.token_mean and obj.description.startswith("CIF convert stage")


def _count_llm_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = MultimodalLM.forward
    monkeypatch.setattr(MultimodalLM, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_convert_stage_teaches_the_fired_vectors_the_answer_tokens(tmp_path: Path, tiny_llm_dir: Path, tiny_plan,
                                                                    write_task, monkeypatch: pytest.MonkeyPatch,
                                                                    metric: str) -> None:
    write_task(tmp_path, 32)
    test = write_task(tmp_path, 12, name="test.jsonl", seed=5)
    objectives = {"cif_tokens": {"weight": 1.0, "params": {"metric": metric}}}
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"objectives": objectives, "max_steps": 120,
                                                    "batch_size": 16, "optimizer": {"lr": 1e-2}})
    plan["model"]["modalities"]["vec"]["bridge"] = CFORMER
    calls = _count_llm_forwards(monkeypatch)
    result = train(plan, base_dir=tmp_path)
    assert not calls  # the convert stage never runs the LLM
    losses = [r["loss/cif_tokens"] for r in _log(tmp_path)]
    assert losses[-1] < 0.2 * losses[0]
    model: Any = result.model.eval()
    examples = read_manifest(test, model.specs, BadSamples("fail"))
    batch = model.collator(padding_side="right")([e.as_collator_input() for e in examples])
    ids, valid = transcript_tokens(model, batch)
    fired = read_out(model, list(batch.media), metric=metric)
    hits = [f == ids[i][valid[i]].tolist() for i, f in enumerate(fired)]
    assert sum(hits) >= 10  # held-out vectors read as their answer's tokens, counted right


def test_l2_scores_pick_the_nearest_row_and_dot_scores_the_largest_product() -> None:
    from xmm.errors import ConfigError
    from xmm.training.objectives_cif import token_logits

    table = torch.tensor([[1.0, 0.0], [4.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.2, 0.1]])
    assert token_logits(v, table, "dot").argmax().item() == 1  # the long row wins a dot product
    assert token_logits(v, table, "l2").argmax().item() == 0  # the near row wins by distance
    dist = -(v[:, None] - table[None]).pow(2).sum(-1)
    assert torch.allclose(token_logits(v, table, "l2").softmax(-1), dist.softmax(-1), atol=1e-6)
    with pytest.raises(ConfigError, match="metric"):
        token_logits(v, table, "cosine")


def test_an_answer_s_end_of_turn_token_is_not_a_transcript_token(tmp_path: Path, tiny_llm_dir: Path, write_task) -> None:
    from xmm.training.plugins import import_plugins

    import_plugins(["xmm_tiny_training_plugin"])  # the `vec` modality, as a plan's `plugins:` registers it
    write_task(tmp_path, 2)
    model = MultimodalLM.from_config({"llm": str(tiny_llm_dir), "modalities": {"vec": {"bridge": CFORMER}}})
    examples = read_manifest(tmp_path / "train.jsonl", model.specs, BadSamples("fail"))
    batch = model.collator(padding_side="right")([e.as_collator_input() for e in examples])
    ids, valid = transcript_tokens(model, batch)
    eos = model.tokenizer.eos_token_id
    assert not bool((ids[valid] == eos).any())
    answer = model.tokenizer(examples[0].messages[-1]["content"][0]["text"], add_special_tokens=False)["input_ids"]
    assert ids[0][valid[0]].tolist() == answer
    assert torch.equal(valid.sum(1), torch.tensor([len(answer), valid[1].sum().item()]))


def _log(root: Path) -> list[dict[str, Any]]:
    import json

    lines = (root / "run" / "logs" / "train.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss/cif_tokens" in r]
