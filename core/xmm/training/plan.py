"""``StagePlan``: the user-written training plan (YAML), validated with pydantic.

A plan names the model, where runs and the feature cache live, and a list of stages. Each stage says what is
trainable (component selectors such as ``bridge:image`` / ``bridge:*`` / ``llm:lora`` or glob patterns over parameter
names), its data (JSONL manifests), objectives with weights, optimiser, schedule, length, batch size and gradient
accumulation, and an optional LoRA config. Relative paths (manifests, ``output_dir``, ``cache_dir``, a model YAML)
resolve against the plan file's folder. Errors are :class:`~xmm.errors.ConfigError` naming the field path, e.g.
``stages.1.trainable.0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from xmm.data import DataSource
from xmm.errors import ConfigError
from xmm.model.config import LoraSettings, MultimodalConfig

COMPONENT_KINDS = ("bridge", "encoder", "llm", "projector")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_selector(selector: str) -> str:
    """Syntax check of a trainable selector; component kinds must be known (typo protection before any model work).

    ``kind:name`` (``bridge:image``, ``bridge:*``, ``llm:lora``, ``llm:embeddings:new``, ``bridge:image:adapter``)
    names model components; anything without ``:`` is an fnmatch glob over parameter names. A trailing ``?`` marks a
    selector that may match nothing.
    """
    body = selector[:-1] if selector.endswith("?") else selector
    if not body.strip():
        raise ValueError("empty selector")
    if ":" in body:
        kind = body.split(":", 1)[0]
        if kind not in COMPONENT_KINDS:
            raise ValueError(
                f"unknown component kind '{kind}' in selector {selector!r}; components are "
                f"{', '.join(k + ':...' for k in COMPONENT_KINDS)} (a parameter-name glob has no ':')"
            )
    return selector


# validated per item, so an error points at the list index (``stages.1.trainable.0``)
Selector = Annotated[str, AfterValidator(check_selector)]


class ObjectiveSpec(_Strict):
    """One objective of a stage: a registered name, its weight in the total loss and keyword parameters."""

    name: str
    weight: float = Field(1.0, ge=0.0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from xmm.training.objectives import get_objective

        get_objective(v)  # raises ConfigError (a ValueError) listing the known names
        return v

    @model_validator(mode="after")
    def _known_params(self) -> ObjectiveSpec:
        """A parameter the objective's function does not take, or a value outside a ``Literal`` it is annotated
        with, fails here, at plan load, not at the first step."""
        import inspect
        import typing

        from xmm.training.objectives import get_objective

        fn = get_objective(self.name).fn
        sig = inspect.signature(fn)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            return self
        taken = [n for n, p in list(sig.parameters.items())[3:]  # after (model, batch, output)
                 if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        unknown = sorted(set(self.params) - set(taken))
        if unknown:
            raise ValueError(f"objective '{self.name}' takes no parameter {unknown}; it takes {taken or 'none'}")
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - a plugin's annotation that does not resolve only skips this check
            hints = {}
        for name, value in self.params.items():
            if typing.get_origin(hints.get(name)) is Literal and value not in typing.get_args(hints[name]):
                raise ValueError(f"objective '{self.name}': {name} must be one of {list(typing.get_args(hints[name]))}, "
                                 f"got {value!r}")
        return self


class ParamGroup(_Strict):
    """Parameters (by selector) that get their own learning rate / weight decay."""

    params: list[Selector] = Field(min_length=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)


class OptimizerConfig(_Strict):
    """Optimiser and its defaults; ``groups`` override lr/weight decay for the parameters they select."""

    type: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0)
    groups: list[ParamGroup] = Field(default_factory=list)


class ScheduleConfig(_Strict):
    """Learning-rate schedule over the stage's optimiser steps: linear warm-up, then constant/linear/cosine decay
    to ``min_lr_ratio`` x lr."""

    type: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)


class DataConfig(_Strict):
    """Training data of a stage, concatenated: each entry a path (an xmm manifest or any format ``xmm.data`` detects)
    or a :class:`~xmm.data.DataSource` mapping (``{path, format, media_root, columns, ...}``); paths are relative to
    the plan file."""

    train: list[str | DataSource] = Field(min_length=1)
    shuffle: bool = True
    max_examples: int | None = Field(None, gt=0)
    num_workers: int | Literal["auto"] = Field("auto", description="data loader worker processes (0: none, in the "
                                               "training process); auto: as many as the machine spares")
    prefetch: int = Field(2, ge=1, description="batches each worker prepares ahead")
    buckets: int = Field(0, ge=0, description="batch examples of similar length: sort windows of this many batches "
                         "by length (0: off, the plain shuffled order); pays off where lengths differ several-fold, "
                         "as in a stage that mixes modalities")
    drop_last: bool = True

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("num_workers must be >= 0 or 'auto'")
        return v

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, os.PathLike, dict, DataSource)) else v


class EvalConfig(_Strict):
    """Optional evaluation at the end of a stage (rank 0), written to the stage checkpoint's ``eval.json``."""

    manifest: str
    metric: Literal["exact", "contains", "wer"] = "exact"
    limit: int | None = Field(None, gt=0)
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(8, gt=0)


class StageConfig(_Strict):
    """One training stage. ``batch_size`` is the global batch per micro-step (split across processes), so a run
    computes the same thing on 1 or N processes; one optimiser step sees ``batch_size * grad_accum`` examples."""

    name: str = ""
    trainable: list[Selector] = Field(min_length=1)
    data: DataConfig
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [ObjectiveSpec(name="lm")], min_length=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    max_steps: int | None = Field(None, gt=0, description="optimiser steps")
    epochs: float | None = Field(None, gt=0, description="passes over the data (alternative to max_steps)")
    batch_size: int | Literal["auto"] = Field(
        8, description="examples per micro-step over all processes; auto: the largest that fits the device "
        "(xmm.training.autobatch), with global_batch_size kept by accumulation")
    global_batch_size: int | None = Field(None, gt=0, description="with batch_size auto: examples per optimiser step")
    memory_budget_gb: float | None = Field(None, gt=0, description="with batch_size auto: memory a step may use "
                                           "(default: 90% of a GPU, half the available RAM on a CPU)")
    grad_accum: int = Field(1, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        False, description="run the LLM decoder under torch.compile (true: CUDA graphs on CUDA); spliced lengths are "
        "padded to a multiple of 16 so that few shapes compile")
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    feature_cache: bool = True
    eval: EvalConfig | None = None

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        # checked here so that an error names the field itself, not a member of the union
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"batch_size must be a number of examples greater than 0 or 'auto', got {v!r}")
        if v <= 0:
            raise ValueError("Input should be greater than 0 (or 'auto')")
        return v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objective_forms(cls, v: Any) -> Any:
        # accepted: [lm, ...] | {lm: 1.0, qformer_itc: {weight: 0.5, params: {...}}} | [{name: lm, weight: 1}]
        if isinstance(v, str):
            return [{"name": v}]
        if isinstance(v, dict):
            out = []
            for name, spec in v.items():
                if isinstance(spec, dict):
                    out.append({"name": name, **spec})
                else:
                    out.append({"name": name, "weight": 1.0 if spec is None else spec})
            return out
        if isinstance(v, list):
            return [{"name": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _length(self) -> StageConfig:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of 'max_steps' and 'epochs'")
        if self.global_batch_size is not None and (self.batch_size != "auto" or self.grad_accum != 1):
            raise ValueError("global_batch_size goes with batch_size: auto (the accumulation is derived from it), "
                             "not with a fixed batch_size or grad_accum")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        return self


class FsdpConfig(_Strict):
    """FSDP settings: torch's FSDP2 ``fully_shard`` over the frozen LLM's decoder layers."""

    layers: list[str] | None = Field(
        None, min_length=1, description="class names of the LLM layers to shard; default: the LLM's _no_split_modules")
    reshard_after_forward: bool = Field(True, description="free gathered layer weights after each forward (less "
                                        "memory, one more all-gather in backward)")
    cpu_offload: bool = Field(False, description="keep the sharded weights in CPU memory between uses")


class DistributedConfig(_Strict):
    """How the processes of a multi-process run (``torchrun``, ``accelerate launch``) share the work.

    ``ddp`` (the default): every process holds the whole model and the trained parts' gradients are all-reduced.
    ``fsdp``: as ddp, but each frozen LLM decoder layer is sharded over the processes (torch FSDP2) and gathered
    only while it runs; the trained parts stay whole, so checkpoints and ``--resume`` are unchanged.
    ``deepspeed``: the stage model and optimiser go to DeepSpeed through accelerate with the given ZeRO config (a
    JSON path relative to the plan, or an inline mapping); needs GPUs and the ``deepspeed`` extra.
    A plain string is the strategy: ``distributed: fsdp``.
    """

    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    fsdp: FsdpConfig | None = None
    deepspeed: str | dict[str, Any] | None = Field(None, description="DeepSpeed config: JSON path or mapping")

    @model_validator(mode="before")
    @classmethod
    def _strategy_only(cls, v: Any) -> Any:
        return {"strategy": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _matching_sections(self) -> DistributedConfig:
        if self.strategy == "deepspeed" and self.deepspeed is None:
            raise ValueError("strategy 'deepspeed' needs 'deepspeed': the path of a DeepSpeed JSON config or a mapping")
        if self.strategy != "deepspeed" and self.deepspeed is not None:
            raise ValueError(f"'deepspeed' is set but strategy is '{self.strategy}' (set strategy: deepspeed)")
        if self.strategy != "fsdp" and self.fsdp is not None:
            raise ValueError(f"'fsdp' is set but strategy is '{self.strategy}' (set strategy: fsdp)")
        return self

    @property
    def fsdp_settings(self) -> FsdpConfig:
        """The FSDP settings, defaults filled in."""
        return self.fsdp or FsdpConfig()


class StagePlan(_Strict):
    """A whole training run: model, run folders, seed, bad-sample policy, checkpointing and stages."""

    model: dict[str, Any] | str = Field(description="a MultimodalConfig (inline mapping) or the path of its YAML")
    preset: str | None = Field(None, description="the preset this plan was built from (informational once merged)")
    output_dir: str = "runs/xmm"
    cache_dir: str | None = Field(None, description="feature cache folder; default $XMM_HOME/features")
    seed: int = 0
    on_bad_sample: Literal["skip", "fail"] = "skip"
    checkpoint_every: int | None = Field(None, ge=1, description="optimiser steps between periodic checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="periodic checkpoints kept (stage-end ones are all kept)")
    log_every: int = Field(1, ge=1)
    threads: int | Literal["auto"] | None = Field(
        None, description="torch compute threads: a number or auto (the cores free when the run starts); unset: "
        "auto, or OMP_NUM_THREADS when that is set. `xmm train --threads` overrides it")
    plugins: list[str] = Field(default_factory=list, description="importable modules registered as xmm plugins")
    report_to: Literal["auto", "jsonl"] | list[Literal["jsonl", "tensorboard", "wandb"]] = "auto"
    distributed: DistributedConfig | None = Field(None, description="ddp (default), fsdp or deepspeed; see "
                                                   "DistributedConfig")
    stages: list[StageConfig] = Field(min_length=1)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str | None = PrivateAttr(default=None)

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("threads must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _names(self) -> StagePlan:
        for i, st in enumerate(self.stages):
            if not st.name:
                st.name = f"stage{i + 1}"
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {dup}")
        return self

    # -- paths -------------------------------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str | None:
        return self._source

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A path from the plan: absolute as given, relative ones against the plan file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    @property
    def output_path(self) -> Path:
        return self.resolve(self.output_dir)

    @property
    def cache_path(self) -> Path:
        if self.cache_dir is None:
            from xmm.io import xmm_home

            return xmm_home() / "features"
        return self.resolve(self.cache_dir)

    def multimodal_config(self) -> MultimodalConfig:
        """The validated model config; errors name ``model.<field>`` or the model YAML file."""
        if isinstance(self.model, str):
            return MultimodalConfig.load(self.resolve(self.model))
        try:
            return MultimodalConfig.model_validate(self.model)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in ("model", *err["loc"]))
            raise ConfigError(f"{err['msg']} (got {err.get('input')!r:.200})", field=loc, source=self._source) from e

    def stage(self, name_or_index: str | int) -> StageConfig:
        if isinstance(name_or_index, int):
            return self.stages[name_or_index]
        for st in self.stages:
            if st.name == name_or_index:
                return st
        raise ConfigError(f"no stage named '{name_or_index}'; stages: {[s.name for s in self.stages]}", field="stages")

    def to_yaml(self) -> str:
        """The fully merged plan as YAML (written next to checkpoints so a run can be reproduced)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read plan: {e.strerror or e}", source=path) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=path) from e
    if not isinstance(data, dict):
        raise ConfigError("a plan must be a mapping with at least 'model' and 'stages' (or 'preset')", source=path)
    return data


def load_plan(
    source: str | os.PathLike[str] | dict[str, Any] | StagePlan,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    import_plugins: bool = True,
) -> StagePlan:
    """Read, merge (``preset:`` + overrides) and validate a plan from a YAML path or a dict.

    ``base_dir`` is where relative paths resolve (default: the YAML's folder, or the working directory for a dict).
    The plan's ``plugins`` are imported and registered first, so their modalities and objectives validate.
    """
    if isinstance(source, StagePlan):
        return source
    src_name: str | None = None
    if isinstance(source, dict):
        data = dict(source)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(source)
        data = _read_yaml(path)
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
        src_name = str(path)
    if import_plugins and isinstance(data.get("plugins"), list):
        from xmm.training.plugins import import_plugins as _import

        _import(data["plugins"], source=src_name)
    if data.get("preset") is not None:
        from xmm.training.presets import apply_preset

        data = apply_preset(data, base_dir=base, source=src_name)
    try:
        plan = StagePlan.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{msg} (got {err.get('input')!r:.200})", field=loc or None, source=src_name) from e
    plan._base_dir = base.resolve()
    plan._source = src_name
    return plan
