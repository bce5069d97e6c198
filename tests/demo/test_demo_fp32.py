"""Where the demo trains in fp32 on a CPU (no native bf16), its tasks' ``fp32_steps`` replace their steps
(issue 18); elsewhere the plan is unchanged."""

from __future__ import annotations

import pytest
from xmm.demo import runner
from xmm.recipes import DemoSize


@pytest.mark.parametrize("name", ["image-shapes", "device-telemetry"])
def test_fp32_cpus_train_fewer_llm_steps(name: str) -> None:
    from xmm.registry import get_registry

    task = get_registry().demo_task(name)
    fast = runner.task_recipe(task, "default", fp32=False)
    slow = runner.task_recipe(task, "default", fp32=True)
    size = task.size("default")
    assert size.fp32_steps, "the default demo sizes an fp32 CPU's steps"
    for stage in fast.stages:
        want = size.fp32_steps.get(stage.name, stage.steps)
        assert slow.stage(stage.name).steps == want <= stage.steps
    assert slow.stage("align").steps < fast.stage("align").steps  # the LLM stage is what costs there
    assert runner.task_recipe(task, "quick", fp32=True) == runner.task_recipe(task, "quick", fp32=False)


def test_the_choice_follows_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import xmm.model.build as build
    import xmm.model.numerics as numerics

    monkeypatch.setattr(build, "resolve_device", lambda name: __import__("torch").device("cpu"))
    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: False)
    assert runner.trains_in_fp32_on_cpu()
    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: True)
    assert not runner.trains_in_fp32_on_cpu()
    monkeypatch.setattr(build, "resolve_device", lambda name: __import__("torch").device("cuda"))
    monkeypatch.setattr(numerics, "cpu_supports_bf16", lambda: False)
    assert not runner.trains_in_fp32_on_cpu()
    assert DemoSize(n_train=1, n_test=1).fp32_steps == {}
