"""The staged loop in one process: stages, freezing, LoRA, accumulation, cache, checkpoints, logs, objectives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from xmm.errors import ConfigError, TrainingError
from xmm.training.loop import train


def _lora_stage(**kw):
    stage = {"name": "tune", "trainable": ["bridge:vec", "llm:lora"], "data": {"train": "train.jsonl"},
             "lora": {"r": 2, "alpha": 4, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
             "gradient_checkpointing": True, "grad_accum": 2, "max_steps": 3, "batch_size": 4, "mixed_precision": "bf16",
             "optimizer": {"lr": 1e-3, "groups": [{"params": ["llm:lora"], "lr": 5e-3}]},
             "schedule": {"type": "cosine", "warmup_steps": 1},
             "eval": {"manifest": "train.jsonl", "metric": "exact", "limit": 3, "max_new_tokens": 3}}
    stage.update(kw)
    return stage


def test_two_stage_run(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_plan, write_task) -> None:
    from xmm.model import MultimodalLM

    write_task(tmp_path, 16, bad_lines=True)
    plan = tiny_plan(tmp_path, tiny_llm_dir, checkpoint_every=2, keep_checkpoints=1)
    plan["stages"].append(_lora_stage())
    result = train(write_plan(tmp_path, plan))
    run = tmp_path / "run"
    model = result.model

    # files of the run
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "model" / "xmm.json").exists() and (run / "model" / "lora").is_dir()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["latest", "stage-1-align", "stage-2-tune", "step-00000008"]  # older periodic ones pruned
    assert (run / "checkpoints" / "latest").read_text().strip() == "stage-2-tune"
    assert not (run / "checkpoints" / "stage-1-align" / "model" / "lora").exists()
    for f in ("optimizer.json", "optimizer.safetensors", "scheduler.json", "scheduler.safetensors", "trainer_state.json",
              "rng/rank-0.json", "rng/rank-0.safetensors", "trained.safetensors"):
        assert (run / "checkpoints" / "stage-2-tune" / f).exists(), f
    assert not list((run / "checkpoints").rglob("*.pt"))  # no pickle anywhere (issue 17)

    # the log: one record per step with per-objective losses, lr, throughput and the skipped count
    records = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 10))
    assert {"loss", "loss/lm", "lr", "samples_per_s", "skipped", "grad_norm", "stage"} <= set(steps[-1])
    assert steps[-1]["skipped"] == 3 and steps[0]["stage"] == "align" and steps[-1]["stage"] == "tune"
    assert steps[6]["lr"] == pytest.approx(1e-3)  # stage 2 after its 1-step warm-up: the bridge group's lr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bad_samples"]["by_kind"] == {"invalid_json": 1, "unreadable_media": 2}

    # only what was selected changed; the base stayed frozen; the saved model reloads to the same weights
    fresh = MultimodalLM.from_config(plan["model"])
    trained_llm = {n.replace(".base_layer", ""): p for n, p in model.llm.named_parameters() if "lora_" not in n}
    for name, p in fresh.llm.named_parameters():
        assert torch.equal(p, trained_llm[name]), name
    assert not torch.equal(fresh.bridges["vec"].mlp[0].weight, model.bridges["vec"].mlp[0].weight)
    assert torch.equal(fresh.encoders["vec"].proj.weight, model.encoders["vec"].proj.weight)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in model.llm.named_parameters() if "lora_B" in n)
    loaded = MultimodalLM.from_pretrained(run / "model")
    assert torch.equal(loaded.bridges["vec"].mlp[2].weight, model.bridges["vec"].mlp[2].weight)

    # end-of-stage evaluation
    ev = result.stages[1]["eval"]
    assert ev["n"] == 3 and ev["metric"] == "exact" and 0.0 <= ev["score"] <= 1.0
    assert json.loads((run / "checkpoints" / "stage-2-tune" / "model" / "eval.json").read_text())["n"] == 3


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    write_task(tmp_path, 16)
    big = train(tiny_plan(tmp_path, tiny_llm_dir, output_dir="big", stage={"batch_size": 8, "max_steps": 2}), base_dir=tmp_path)
    acc = train(tiny_plan(tmp_path, tiny_llm_dir, output_dir="acc", stage={"batch_size": 4, "grad_accum": 2, "max_steps": 2}),
                base_dir=tmp_path)
    a = load_file(tmp_path / "big" / "model" / "bridges" / "vec" / "model.safetensors")
    b = load_file(tmp_path / "acc" / "model" / "bridges" / "vec" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert big.global_step == acc.global_step == 2


def test_feature_cache_is_reused_across_epochs_stages_and_runs(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    from xmm_tiny_training_plugin import VecEncoder

    write_task(tmp_path, 8)
    second = {"name": "again", "trainable": ["bridge:vec"], "data": {"train": "train.jsonl"}, "epochs": 1, "batch_size": 4}
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"epochs": 3, "max_steps": None})
    plan["stages"].append(second)
    before = VecEncoder.calls
    train(plan, base_dir=tmp_path)
    assert VecEncoder.calls - before == 8  # 8 distinct items, 4 epochs over two stages: each encoded once
    assert list((tmp_path / "cache").glob("shard-*.safetensors"))
    before = VecEncoder.calls
    train(plan, output_dir=tmp_path / "run2", base_dir=tmp_path)
    assert VecEncoder.calls == before  # a later run starts warm
    plan["stages"][0]["feature_cache"] = False
    plan["stages"] = plan["stages"][:1]
    before = VecEncoder.calls
    train(plan, output_dir=tmp_path / "run3", base_dir=tmp_path)
    assert VecEncoder.calls - before == 3 * 8  # no cache: every epoch encodes again


def test_bad_sample_fail_policy_stops_the_run(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    write_task(tmp_path, 8, bad_lines=True)
    with pytest.raises(TrainingError, match="train.jsonl:9.*on_bad_sample: fail"):
        train(tiny_plan(tmp_path, tiny_llm_dir, on_bad_sample="fail"), base_dir=tmp_path)


def test_plan_level_errors(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    write_task(tmp_path, 8)
    with pytest.raises(ConfigError, match="no component matches") as e:
        train(tiny_plan(tmp_path, tiny_llm_dir, stage={"trainable": ["bridge:image"]}), base_dir=tmp_path)
    assert e.value.field == "stages.0.trainable.0"
    with pytest.raises(TrainingError, match="none of its objectives .*qformer_itc"):
        train(tiny_plan(tmp_path, tiny_llm_dir, stage={"objectives": ["qformer_itc"]}), base_dir=tmp_path)
    with pytest.raises(TrainingError, match="8 records, fewer than batch_size 16"):
        train(tiny_plan(tmp_path, tiny_llm_dir, stage={"batch_size": 16}), base_dir=tmp_path)


def _train_counting_llm_forwards(plan: dict, base_dir: Path) -> tuple[Any, int]:
    """Train ``plan`` and count the MultimodalLM forward calls (stage-1 objectives must make none)."""
    from xmm.model import MultimodalLM

    calls = []
    original = MultimodalLM.forward
    MultimodalLM.forward = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)  # type: ignore[method-assign]
    try:
        return train(plan, base_dir=base_dir), len(calls)
    finally:
        MultimodalLM.forward = original  # type: ignore[method-assign]


def test_qformer_stage1_and_cif_objectives(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    """X-LLM stage 1: Q-Former ITC/ITM/ITG without running the LLM; a C-Former trained by the CIF quantity loss."""
    write_task(tmp_path, 8)
    qformer = {"type": "qformer", "num_queries": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
               "intermediate_size": 64, "text_branch": True, "vocab_size": 320, "max_text_length": 16, "embed_dim": 16}
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"objectives": {"qformer_itc": 1.0, "qformer_itm": 1.0, "qformer_itg": 0.5},
                                                "max_steps": 3})
    plan["model"]["modalities"]["vec"]["bridge"] = qformer
    result, llm_calls = _train_counting_llm_forwards(plan, tmp_path)
    assert not llm_calls  # bridge objectives only: the LLM never ran
    last = result.stages[0]["last"]
    assert {"loss/qformer_itc", "loss/qformer_itm", "loss/qformer_itg"} <= set(last)
    assert last["loss"] == pytest.approx(last["loss/qformer_itc"] + last["loss/qformer_itm"] + 0.5 * last["loss/qformer_itg"], rel=1e-4)

    plan = tiny_plan(tmp_path, tiny_llm_dir, output_dir="cif", stage={"objectives": {"lm": 1.0, "cif_quantity": 1.0}, "max_steps": 2})
    plan["model"]["modalities"]["vec"]["bridge"] = {"type": "cformer", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                   "cif_channels": 16}
    last = train(plan, base_dir=tmp_path).stages[0]["last"]
    assert last["loss/cif_quantity"] > 0 and "loss/lm" in last


def test_resume_at_a_stage_boundary_is_bit_identical(tmp_path: Path, tiny_llm_dir: Path, monkeypatch: pytest.MonkeyPatch, tiny_plan, write_task) -> None:
    """A run that died right after stage 1's checkpoint resumes into the LoRA stage exactly (LoRA init included)."""
    from xmm.training import loop

    write_task(tmp_path, 16)
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 2})
    plan["stages"].append(_lora_stage(eval=None, max_steps=2))
    train({**plan, "output_dir": "full"}, base_dir=tmp_path)

    real = loop.run_stage

    def dies_in_stage_2(session, index, *args, **kwargs):
        if index == 1:
            raise RuntimeError("killed")
        return real(session, index, *args, **kwargs)

    monkeypatch.setattr(loop, "run_stage", dies_in_stage_2)
    with pytest.raises(RuntimeError, match="killed"):
        train({**plan, "output_dir": "cut"}, base_dir=tmp_path)
    monkeypatch.setattr(loop, "run_stage", real)
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "stage-1-align"
    train({**plan, "output_dir": "cut"}, base_dir=tmp_path, resume=True)
    a = load_file(tmp_path / "full" / "checkpoints" / "stage-2-tune" / "trained.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "stage-2-tune" / "trained.safetensors")
    assert set(a) == set(b) and any("lora_A" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_guided_answer_convert_stage_teaches_the_answer_words_without_the_llm(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    """The convert stage of a question-guided bridge: no LLM forward, and afterwards the first guided token, read
    through the LLM's own embedding table, names the answer of held-out examples."""
    from xmm.encoder import EncoderOutput
    from xmm.model.media import pad_context, turn_text_embeddings

    write_task(tmp_path, 32)
    held_out = write_task(tmp_path / "test", 8, seed=1, name="test.jsonl")
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"name": "convert", "objectives": {"guided_answer": 1.0}, "max_steps": 60,
                                                "batch_size": 8, "optimizer": {"lr": 1e-2}})
    plan["model"]["modalities"]["vec"]["bridge"] = {"type": "guided-mlp", "guided_tokens": 2, "attn_dim": 16}
    plan["log_every"] = 1
    result, llm_calls = _train_counting_llm_forwards(plan, tmp_path)
    assert not llm_calls
    logged = [json.loads(x) for x in (Path(result.output_dir) / "logs" / "train.jsonl").read_text().splitlines()]
    losses = [r["loss/guided_answer"] for r in logged if "loss/guided_answer" in r and "step" in r]
    assert len(losses) >= 10 and sum(losses[-5:]) < 0.2 * sum(losses[:5])
    model = result.model
    lines = [json.loads(x) for x in held_out.read_text().splitlines()]
    batch = model.collator()([{"messages": x["messages"], "base_dir": held_out.parent} for x in lines])
    table = model.llm.get_input_embeddings()
    ids = batch.input_ids.to(model.device)
    with torch.no_grad():
        embeds = table(ids)
        enc = EncoderOutput.pad(model.encode_media(list(batch.media)))  # the run closed its feature cache
        ctx, cmask = pad_context([turn_text_embeddings(embeds, ids, it, model.placeholder_ids) for it in batch.media], model.device)
        out = model.bridges["vec"](enc.features.float().to(model.device), enc.mask.to(model.device), modality="vec",
                                   context=ctx, context_mask=cmask)
        guess = (out.embeds[:, -2].float() @ table.weight.float().T).argmax(-1)
    words = [model.tokenizer.decode([int(t)]) for t in guess]
    answers = [x["messages"][1]["content"][0]["text"] for x in lines]
    assert sum(bool(w.strip()) and a.startswith(w.strip()) for w, a in zip(words, answers)) >= 6, list(zip(words, answers))
