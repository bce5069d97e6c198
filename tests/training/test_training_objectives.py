"""Objectives reach the trainer through the `xmm_objectives` hook: core's, the decoders', and a plugin's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from xmm import hookimpl
from xmm.errors import ConfigError
from xmm.objective import Objective, objective
from xmm.registry import get_registry, reset_registry
from xmm.training import objectives as objectives_mod
from xmm.training.objectives import CORE_OBJECTIVES, available_objectives, get_objective, register_objective

# name -> (owner plugin, needs_output, needs_hidden_states, token_mean)
CORE = {
    "lm": ("xmm-core:training", True, False, True),
    "qformer_itc": ("xmm-core:training", False, False, False),
    "qformer_itm": ("xmm-core:training", False, False, False),
    "qformer_itg": ("xmm-core:training", False, False, False),
    "cif_quantity": ("xmm-core:training", False, False, False),
    "guided_answer": ("xmm-core:training", False, False, False),
    "decoder_alignment": ("xmm-core:training", True, True, False),
}


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_objectives_come_through_the_hook(name: str) -> None:
    reg = get_registry()
    owner, needs_output, needs_hidden, token_mean = CORE[name]
    obj = get_objective(name)
    assert obj is reg.objective(name) and reg.owner("objectives", name) == owner
    assert (obj.needs_output, obj.needs_hidden_states, obj.token_mean) == (needs_output, needs_hidden, token_mean)
    assert obj.description and name in available_objectives()


def test_every_registered_objective_keeps_the_contract() -> None:
    reg = get_registry()
    assert {o.name for o in CORE_OBJECTIVES} | {"decoder_alignment"} <= set(reg.objectives)
    for name, obj in reg.objectives.items():
        assert isinstance(obj, Objective), name
        assert obj.name == name and callable(obj.fn)
        assert obj.needs_output or not obj.needs_hidden_states, name


def test_the_decorator_builds_an_objective_without_registering_it() -> None:
    @objective("test_unregistered", needs_output=False, needs_hidden_states=True)
    def loss(model: Any, batch: Any, output: Any, scale: float = 1.0) -> torch.Tensor:
        """Twice the scale.

        More text that is not the description."""
        return torch.tensor(2.0 * scale)

    assert isinstance(loss, Objective) and loss.name == "test_unregistered"
    assert loss.description == "Twice the scale."
    assert loss.needs_output  # hidden states come with the model's output
    assert loss(None, None, None, scale=3.0).item() == 6.0
    assert "test_unregistered" not in available_objectives()
    with pytest.raises(ConfigError, match="non-empty name"):
        objective(" ")(loss.fn)


def test_an_unknown_objective_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown objective 'nope'; known: .*guided_answer.*lm"):
        get_objective("nope")


class _ScaledLM:
    """An in-process plugin bringing one objective: the LM loss times ``scale``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

        @objective("test_scaled_lm", token_mean=True)
        def scaled_lm(model: Any, batch: Any, output: Any, scale: float = 1.0) -> torch.Tensor | None:
            """The LM loss times ``scale``."""
            self.calls += 1
            return None if output is None or output.loss is None else output.loss * scale

        self.objective = scaled_lm

    @hookimpl
    def xmm_objectives(self) -> dict[str, Objective]:
        return {self.objective.name: self.objective}


def test_a_plugin_brings_an_objective_that_a_plan_trains_with(tmp_path: Path, tiny_llm_dir: Path, fresh_registry: Any, tiny_plan, write_task) -> None:
    from xmm.training.loop import train

    plugin = _ScaledLM()
    info = get_registry().register(plugin, name="test-objective-plugin")
    assert info.error is None and info.objectives == ["test_scaled_lm"]
    write_task(tmp_path, 8)
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"objectives": {"test_scaled_lm": {"weight": 0.5, "params": {"scale": 4.0}}},
                                                "max_steps": 2})
    result = train(plan, base_dir=tmp_path)
    assert plugin.calls == 2
    last = result.stages[0]["last"]
    assert last["loss"] == pytest.approx(0.5 * last["loss/test_scaled_lm"])
    steps = [json.loads(x) for x in (tmp_path / "run" / "logs" / "train.jsonl").read_text().splitlines()]
    assert all("loss/test_scaled_lm" in r for r in steps if "event" not in r)

    # the same plan without the plugin is refused before any model work, naming the field
    reset_registry()
    with pytest.raises(ConfigError, match="unknown objective 'test_scaled_lm'") as e:
        train(plan, base_dir=tmp_path)
    assert "stages.0.objectives" in str(e.value)


def test_register_objective_still_works_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectives_mod, "_LEGACY", {})

    def my_loss(model: Any, batch: Any, output: Any, scale: float = 1.0) -> torch.Tensor:
        return torch.tensor(scale)

    with pytest.warns(DeprecationWarning, match="register_objective is deprecated"):
        register_objective("test_only_loss", my_loss, needs_output=False)
    assert get_objective("test_only_loss")(None, None, None, scale=2.0).item() == 2.0
    assert "test_only_loss" in available_objectives()
    with pytest.warns(DeprecationWarning):
        register_objective("test_only_loss", my_loss)  # the same function again (a re-imported module) is fine
        with pytest.raises(ConfigError, match="already registered"):
            register_objective("test_only_loss", lambda m, b, o: None)
        with pytest.raises(ConfigError, match="'lm' is already registered"):
            register_objective("lm", my_loss)
