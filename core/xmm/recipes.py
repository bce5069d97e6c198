"""Recipes and demo tasks: how a modality's author recommends training it, and how ``xmm demo`` proves it.

A :class:`Recipe` is the recommended training of one modality: the encoder and bridge to use and the stages (X-LLM's
convert / align / integrate, or others), each saying what it trains, its objectives, batch size, learning rates and
steps. Only objectives that apply to the recipe's bridge are listed; there is nothing to zero.
:meth:`Recipe.plan_stages` writes the stages as entries of a training plan (``xmm.training.plan.StagePlan``);
:meth:`Recipe.with_steps`, :meth:`Recipe.scaled` and :meth:`Recipe.fit_budget` size the step counts.

A :class:`DemoTask` is a synthetic dataset with known answers (train and held-out splits made with separate seeds),
the name of the recipe it trains with, its metric and its sizes per demo mode.

Plugins return both from the ``xmm_recipes`` and ``xmm_demo_tasks`` hooks (name -> object).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xmm.errors import ConfigError

DataRole = Literal["train", "captions"]
DemoMode = Literal["quick", "default", "all"]
DEMO_MODES: tuple[DemoMode, ...] = ("quick", "default", "all")
Metric = Literal["exact", "contains", "wer"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_template(template: str) -> str:
    try:
        template.format(modality="m")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{template!r}: the only placeholder a selector may use is {{modality}} ({e})") from None
    return template


class RecipeStage(_Frozen):
    """One stage of a recipe.

    ``trainable`` and the keys of ``lr_groups`` are selector templates (``"bridge:{modality}"``); ``data`` names the
    manifests the stage reads: ``train`` (question-answer pairs) and ``captions`` (caption pairs, used when the data
    has them). ``joint``: the stage trains every modality of a plan together (X-LLM's integrate); it comes last.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.]+$")
    trainable: tuple[str, ...] = Field(("bridge:{modality}",), min_length=1)
    objectives: dict[str, float] = Field(default_factory=lambda: {"lm": 1.0}, min_length=1)
    objective_params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                        description="objective -> its keyword parameters")
    data: tuple[DataRole, ...] = ("train",)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    lr_groups: dict[str, float] = Field(default_factory=dict, description="selector template -> learning rate")
    steps: int = Field(gt=0, description="optimiser steps")
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0, description="warm-up steps = max(1, steps x ratio)")
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)
    joint: bool = False

    @field_validator("objectives", mode="before")
    @classmethod
    def _objective_forms(cls, v: Any) -> Any:
        # a list of names means weight 1 each, as in a plan
        return {name: 1.0 for name in v} if isinstance(v, (list, tuple)) else v

    @field_validator("objectives")
    @classmethod
    def _positive_weights(cls, v: dict[str, float]) -> dict[str, float]:
        zero = sorted(name for name, w in v.items() if not w > 0)
        if zero:
            raise ValueError(f"objectives {zero} have weight <= 0: leave out an objective that does not apply")
        return v

    @model_validator(mode="after")
    def _params_of_listed_objectives(self) -> RecipeStage:
        stray = sorted(set(self.objective_params) - set(self.objectives))
        if stray:
            raise ValueError(f"objective_params names objectives the stage does not list: {stray}")
        return self

    @field_validator("trainable")
    @classmethod
    def _templates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_template(t) for t in v)

    @field_validator("lr_groups")
    @classmethod
    def _group_lrs(cls, v: dict[str, float]) -> dict[str, float]:
        for template, lr in v.items():
            _check_template(template)
            if not lr > 0:
                raise ValueError(f"learning rate of {template!r} must be > 0, got {lr}")
        return v

    @model_validator(mode="after")
    def _groups_are_trained(self) -> RecipeStage:
        extra = sorted(set(self.lr_groups) - set(self.trainable))
        if extra:
            raise ValueError(f"lr_groups {extra} are not in trainable {list(self.trainable)}")
        if "train" not in self.data:
            raise ValueError("data must include 'train'")
        return self

    @property
    def warmup_steps(self) -> int:
        # exact arithmetic: 0.05 x 2000 is 100, never 99
        return max(1, math.floor(self.steps * Fraction(str(self.warmup_ratio))))

    def plan_objectives(self) -> list[str] | dict[str, Any]:
        """The objectives as a plan writes them: names when every weight is 1 and none has parameters, else
        ``{name: weight}`` or ``{name: {weight, params}}``."""
        if self.objective_params:
            return {name: {"weight": w, "params": dict(self.objective_params.get(name, {}))}
                    for name, w in self.objectives.items()}
        if all(w == 1.0 for w in self.objectives.values()):
            return list(self.objectives)
        return dict(self.objectives)

    def plan_stage(self, modality: str, data: Mapping[str, Sequence[str]], *, name: str | None = None) -> dict[str, Any]:
        """This stage as one entry of a plan's ``stages`` for ``modality``; ``data`` maps roles to manifest paths."""
        if not data.get("train"):
            raise ConfigError(f"stage '{self.name}' of the {modality} recipe needs training manifests", field="data.train")
        optimizer: dict[str, Any] = {"type": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay}
        if self.lr_groups:
            optimizer["groups"] = [{"params": [t.format(modality=modality)], "lr": lr} for t, lr in self.lr_groups.items()]
        return {
            "name": name or self.name,
            "trainable": [t.format(modality=modality) for t in self.trainable],
            "data": {"train": [str(p) for role in self.data for p in data.get(role, ())]},
            "objectives": self.plan_objectives(),
            "optimizer": optimizer,
            "schedule": {"type": self.schedule, "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio},
            "max_steps": self.steps,
            "batch_size": self.batch_size,
        }


class Recipe(_Frozen):
    """A modality's recommended training: encoder and bridge (``None``: the modality's defaults) and stages.

    ``bridge`` is one mapping with ``type`` and the bridge's options, as in a model config's modality entry.
    """

    modality: str = Field(min_length=1)
    description: str = ""
    encoder: str | None = None
    encoder_config: dict[str, Any] = Field(default_factory=dict)
    bridge: dict[str, Any] | None = None
    stages: tuple[RecipeStage, ...] = Field(min_length=1)

    @field_validator("bridge")
    @classmethod
    def _bridge_type(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not (isinstance(v.get("type"), str) and v["type"]):
            raise ValueError("a bridge is a mapping with its 'type' and options, e.g. {'type': 'mlp'}")
        return v

    @model_validator(mode="after")
    def _stage_order(self) -> Recipe:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {dup}")
        joint = [i for i, s in enumerate(self.stages) if s.joint]
        if len(joint) > 1 or (joint and joint[0] != len(self.stages) - 1):
            raise ValueError("at most one stage is joint, and it is the last one")
        return self

    # -- reading --------------------------------------------------------------------------------------
    def modality_config(self) -> dict[str, Any]:
        """This recipe's entry in ``MultimodalConfig.modalities`` (only what it sets; the rest stays default)."""
        out: dict[str, Any] = {}
        if self.encoder is not None:
            out["encoder"] = self.encoder
        if self.encoder_config:
            out["encoder_config"] = dict(self.encoder_config)
        if self.bridge is not None:
            out["bridge"] = dict(self.bridge)
        return out

    def stage(self, name: str) -> RecipeStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"the {self.modality} recipe has no stage '{name}'; its stages: {[s.name for s in self.stages]}",
                          field="stages")

    @property
    def joint_stage(self) -> RecipeStage | None:
        return self.stages[-1] if self.stages[-1].joint else None

    @property
    def own_stages(self) -> tuple[RecipeStage, ...]:
        """The stages that train this modality alone (all but the joint one)."""
        return tuple(s for s in self.stages if not s.joint)

    @property
    def objectives(self) -> list[str]:
        """Every objective the recipe uses, in stage order."""
        return list(dict.fromkeys(o for s in self.stages for o in s.objectives))

    # -- sizing ---------------------------------------------------------------------------------------
    def with_steps(self, steps: Mapping[str, int]) -> Recipe:
        """A copy with the named stages' step counts replaced (stages not named keep theirs)."""
        names = [s.name for s in self.stages]
        for name, n in steps.items():
            if name not in names:
                raise ConfigError(f"the {self.modality} recipe has no stage '{name}'; its stages: {names}",
                                  field=f"steps.{name}")
            if not (isinstance(n, int) and n > 0):
                raise ConfigError(f"must be a positive integer, got {n!r}", field=f"steps.{name}")
        return self.model_copy(update={"stages": tuple(
            s.model_copy(update={"steps": steps[s.name]}) if s.name in steps else s for s in self.stages)})

    def scaled(self, factor: float) -> Recipe:
        """A copy with every stage's steps multiplied by ``factor`` (rounded down, at least 1)."""
        if not factor > 0:
            raise ConfigError(f"must be > 0, got {factor}", field="factor")
        return self.with_steps({s.name: max(1, math.floor(s.steps * factor)) for s in self.stages})

    def seconds(self, seconds_per_step: Mapping[str, float]) -> float:
        """The recipe's training time with the given (measured) seconds per step of each stage."""
        missing = [s.name for s in self.stages if s.name not in seconds_per_step]
        if missing:
            raise ConfigError(f"no time per step for stages {missing}", field="seconds_per_step")
        return sum(s.steps * seconds_per_step[s.name] for s in self.stages)

    def fit_budget(self, seconds: float, seconds_per_step: Mapping[str, float]) -> Recipe:
        """A copy whose stages fit in ``seconds`` at the given seconds per step, all scaled by one factor; a recipe
        that fits already is returned as it is (the author's step counts are the most it needs)."""
        if not seconds > 0:
            raise ConfigError(f"must be > 0, got {seconds}", field="seconds")
        total = self.seconds(seconds_per_step)
        return self if total <= seconds else self.scaled(seconds / total)

    # -- writing --------------------------------------------------------------------------------------
    def plan_stages(self, data: Mapping[str, Sequence[str]], *, suffix: str | None = None,
                    joint: bool = True) -> list[dict[str, Any]]:
        """The stages as entries of a plan's ``stages`` (``name-suffix`` when ``suffix`` is given); ``data`` maps
        roles (``train``, ``captions``) to manifest paths; ``joint=False`` leaves out the joint stage."""
        stages = self.stages if joint else self.own_stages
        return [s.plan_stage(self.modality, data, name=f"{s.name}-{suffix}" if suffix else None) for s in stages]


# -- demo tasks ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoData:
    """The manifests a demo task generated: training questions, held-out questions, caption pairs (if any)."""

    train: Path
    test: Path
    captions: Path | None = None

    def manifests(self) -> dict[str, list[str]]:
        """Role -> manifest paths, as :meth:`Recipe.plan_stages` reads them (held-out data is never trained on)."""
        out = {"train": [str(self.train)]}
        if self.captions is not None:
            out["captions"] = [str(self.captions)]
        return out


class DemoSize(_Frozen):
    """How much data and training a task gets in one demo mode."""

    n_train: int = Field(gt=0, description="generated training items (images, telemetry windows, clips, ...)")
    n_test: int = Field(gt=0, description="generated held-out items")
    steps: dict[str, int] = Field(default_factory=dict, description="stage -> steps (other stages: the recipe's)")
    fp32_steps: dict[str, int] = Field(default_factory=dict, description="stage -> steps where training runs in fp32 "
                                       "on a CPU (no native bf16, e.g. AVX2 only): fewer LLM steps, each 2-3x dearer "
                                       "there, for the same held-out goals (other stages: as ``steps``)")
    eval_limit: int | None = Field(None, gt=0, description="held-out examples scored after training (None: all)")
    before_limit: int | None = Field(None, gt=0, description="held-out examples scored before training (None: as "
                                                                "eval_limit); untrained bridges answer almost nothing")


class DemoTask(_Frozen):
    """A synthetic task with known answers that ``xmm demo`` generates, trains with the recipe ``recipe`` (a
    registered recipe's name) and scores on the held-out split.

    ``make(out_dir, *, n_train, n_test, train_seed, test_seed) -> DemoData`` writes both splits under ``out_dir``;
    the held-out seed is ``seed + held_out_seed_offset``. ``sizes`` has
    ``quick`` and ``default`` (``all`` falls back to ``default``). ``default``: the task runs in ``xmm demo`` and
    ``--quick``, otherwise only with ``--all``; ``order`` places it in the plan and the table. ``chance`` returns the
    chance score per ``meta.task`` (``None``: guessing uniformly among the answers each task has in training, for
    exact-match metrics).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    modality: str = Field(min_length=1)
    title: str
    recipe: str = Field(min_length=1)
    make: Callable[..., DemoData]
    metric: Metric
    sizes: dict[DemoMode, DemoSize]
    default: bool = True
    order: int = 100
    max_new_tokens: int = Field(8, gt=0, description="cap on generated tokens when scoring")
    held_out_seed_offset: int = 1000
    chance: Callable[[DemoData], dict[str, float]] | None = None

    @field_validator("sizes")
    @classmethod
    def _modes(cls, v: dict[str, DemoSize]) -> dict[str, DemoSize]:
        missing = [m for m in ("quick", "default") if m not in v]
        if missing:
            raise ValueError(f"sizes needs the modes {missing}")
        return v

    @field_validator("held_out_seed_offset")
    @classmethod
    def _separate_seeds(cls, v: int) -> int:
        if v == 0:
            raise ValueError("the held-out split needs its own seed (offset 0 would repeat the training data)")
        return v

    def size(self, mode: str) -> DemoSize:
        if mode not in DEMO_MODES:
            raise ConfigError(f"unknown demo mode '{mode}'; choose one of {', '.join(DEMO_MODES)}", field="mode")
        return self.sizes.get(mode) or self.sizes["default"]  # type: ignore[return-value]

    def make_data(self, out_dir: Path, mode: str, seed: int) -> DemoData:
        """Generate the train and held-out splits of ``mode`` under ``out_dir``."""
        size = self.size(mode)
        data = self.make(Path(out_dir), n_train=size.n_train, n_test=size.n_test, train_seed=seed,
                         test_seed=seed + self.held_out_seed_offset)
        if not isinstance(data, DemoData):
            raise ConfigError(f"the {self.modality} demo task's make() returned {type(data).__name__}, not DemoData",
                              field="make")
        if Path(data.train).resolve() == Path(data.test).resolve():
            raise ConfigError(f"the {self.modality} demo task wrote its held-out split over the training one",
                              field="make", source=data.test)
        return data
