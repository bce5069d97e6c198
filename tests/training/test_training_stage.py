"""The public pieces of a stage: its model overrides (undone however it ends), `prepare_stage` and one optimiser step,
as the loop and the benchmarks use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from xmm.training.overrides import StageOverrides
from xmm.training.step import StepLosses


def _model_state(model: Any) -> dict[str, Any]:
    """What a stage may change on the model, in a comparable form."""
    wrapped = [name for name, m in model.llm.named_modules() if "forward" in m.__dict__]
    return {"autocast": model.config.autocast, "provider": model.feature_provider, "train_guard": "train" in model.__dict__,
            "wrapped_layers": wrapped, "attention": model.llm.config._attn_implementation,
            "training": [m.training for m in model.modules()]}


@pytest.mark.parametrize("mixed_precision", ["bf16", "no", "auto"])
def test_stage_overrides_are_undone_even_when_the_stage_fails(tiny_model: Any, mixed_precision: str) -> None:
    from xmm.training.selection import apply_selection, select

    apply_selection(tiny_model, select(tiny_model, ["bridge:vec"]))
    tiny_model.llm.config._attn_implementation = "sdpa"  # the kernel a stage replaces while it trains
    before = _model_state(tiny_model)
    provider = object()
    overrides = StageOverrides(tiny_model, tiny_model, mixed_precision=mixed_precision, feature_provider=provider,
                               gradient_checkpointing=True)
    with pytest.raises(RuntimeError, match="step failed"), overrides:
        inside = _model_state(tiny_model)
        want = {"bf16": "bf16", "no": "off", "auto": before["autocast"]}[mixed_precision]
        assert inside["autocast"] == want and inside["provider"] is provider and inside["train_guard"]
        assert len(inside["wrapped_layers"]) == 2 and inside["attention"] != "sdpa"
        assert tiny_model.bridges["vec"].training and not tiny_model.llm.training  # frozen parts stay in eval mode
        with overrides.original_config():
            assert tiny_model.config.autocast == before["autocast"]  # what a checkpoint saves
        assert tiny_model.config.autocast == want
        raise RuntimeError("step failed")
    after = _model_state(tiny_model)
    assert after == {**before, "training": [False] * len(before["training"])}  # and in eval mode


def test_prepare_stage_and_optimizer_step(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> None:
    """A stage prepared and stepped by hand, as a benchmark does: only the bridge moves, the model is restored."""
    from xmm.training.context import RunContext, build_model
    from xmm.training.distributed import accelerator_session
    from xmm.training.plan import load_plan
    from xmm.training.stage import prepare_stage
    from xmm.training.step import next_micro_batches, optimizer_step

    write_task(tmp_path, 16)
    plan = load_plan(tiny_plan(tmp_path, tiny_llm_dir, stage={"grad_accum": 2, "epochs": 1, "max_steps": None,
                                                          "max_grad_norm": 1.0}), base_dir=tmp_path)
    with accelerator_session() as accelerator:
        model = build_model(plan, accelerator.device)
        run = RunContext.open(plan, model, accelerator)
        llm_before = {n: p.detach().clone() for n, p in model.llm.named_parameters()}
        bridge_before = {n: p.detach().clone() for n, p in model.bridges["vec"].named_parameters()}
        try:
            with prepare_stage(run, 0) as stage:
                assert stage.total_steps == 2 and stage.step == 0 and not stage.resumed  # 16 examples / (4 x 2)
                assert stage.samples_per_step == 8 and len(stage.data.dataset) == 16
                assert set(stage.selection.names) == run.trained and all(n.startswith("bridges.vec.") for n in run.trained)
                assert model.feature_provider is run.provider  # the stage reads features through the cache
                batches = next_micro_batches(stage, run.bad)
                assert len(batches) == 2 and (stage.batches.epoch, stage.batches.batch) == (0, 2)
                losses = optimizer_step(stage, batches, accelerator)
            values = losses.read()
        finally:
            run.close()
    assert set(values) == {"loss/lm", "loss", "grad_norm"} and values["loss"] == values["loss/lm"] > 0
    assert all(torch.equal(p, llm_before[n]) for n, p in model.llm.named_parameters())
    assert any(not torch.equal(p, bridge_before[n]) for n, p in model.bridges["vec"].named_parameters())
    assert model.feature_provider is None and not model.training


def test_step_losses_average_micro_batches_and_weigh_the_total() -> None:
    from xmm.objective import objective

    a = objective("a")(lambda m, b, o: None)
    b = objective("b")(lambda m, b, o: None)
    losses = StepLosses([(a, 1.0, {}), (b, 0.5, {})], grad_accum=2)
    losses.add({"loss": torch.tensor(9.0), "loss/a": torch.tensor(1.0), "loss/b": torch.tensor(4.0)})
    losses.add({"loss": torch.tensor(9.0), "loss/a": torch.tensor(3.0)})  # b did not apply to this micro-batch
    losses.grad_norm = torch.tensor(0.25)
    assert losses.read() == {"loss/a": 2.0, "loss/b": 2.0, "loss": 3.0, "grad_norm": 0.25}


def test_weights_checksum_is_a_deprecated_alias() -> None:
    from xmm.persist import tensor_digest
    from xmm.training import loop

    with pytest.warns(DeprecationWarning, match="weights_checksum"):
        checksum = loop.weights_checksum
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    assert checksum is tensor_digest and checksum(params) != checksum(params[::-1])
