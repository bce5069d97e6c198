"""The processes of a run, through Hugging Face ``accelerate``: set-up, the plan's ``distributed`` strategy, tear-down
and the collectives the loop needs.

Under ``torchrun --nproc_per_node N xmm train PLAN.yaml`` (or ``--nnodes M``) every process runs the same loop:
accelerate sets up the process group (gloo on CPU, NCCL on GPUs), wraps each stage in DDP and gives each process its
share of every global batch, so N processes compute what one process computes with the same ``batch_size``. In a
single process every helper here is a no-op that returns its input.

Strategies (``distributed.strategy`` in the plan):

- ``ddp``: every process holds the whole model; accelerate's DDP all-reduces the trained parts' gradients.
- ``fsdp``: as ``ddp`` for the trained parts, while torch's FSDP2 (``fully_shard``) shards each frozen decoder layer
  of the LLM over the processes, once per run (:func:`shard_frozen_llm`); a layer's weights are gathered while it
  runs. The trained parts (bridges, LoRA, new-token rows, projectors, encoders a stage trains) are never sharded, so
  checkpoints, ``trained.safetensors`` and ``--resume`` are the same as under ``ddp``. accelerate's own FSDP2 path
  shards the whole prepared model (the trained parts would become DTensors) and makes every prepared stage a new
  FSDP root, which torch refuses once the layers inside were initialised under the previous stage's root; sharding
  the LLM under one root of its own avoids both.
- ``deepspeed``: each stage's model and optimiser go to accelerate's DeepSpeed plugin with the plan's ZeRO config.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn

from xmm.errors import ConfigError, TrainingError, import_optional
from xmm.persist import tensor_digest
from xmm.training.data import BadSamples
from xmm.training.plan import DistributedConfig, StageConfig, StagePlan
from xmm.training.selection import parameter_names, resolve_selector

log = logging.getLogger("xmm.training")

__all__ = [
    "ShardedLLM",
    "accelerator_session",
    "check_ranks_agree",
    "describe_distributed",
    "distributed_config",
    "end_distributed",
    "gather_bad",
    "make_accelerator",
    "prepare_stage_module",
    "reduce_mean",
    "shard_frozen_llm",
    "sharded_llm",
    "sum_over_processes",
    "trained_weights_gathered",
    "whole_model",
]


def distributed_config(plan: StagePlan | None) -> DistributedConfig:
    """The plan's ``distributed`` section (``ddp`` when the plan has none)."""
    config = plan.distributed if plan is not None else None
    return config if config is not None else DistributedConfig()


def _launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(plan: StagePlan | None = None) -> Any:
    """The run's ``accelerate.Accelerator``: global batches split over processes, DDP that tolerates unused bridges,
    and, for ``distributed.strategy: deepspeed``, accelerate's DeepSpeed plugin with the plan's config."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs

    config = distributed_config(plan)
    extra: dict[str, Any] = {}
    if config.strategy == "deepspeed":
        extra["deepspeed_plugin"] = _deepspeed_plugin(plan, config)
    # the global batch is split across processes (same math on 1 or N processes); stages that leave a bridge unused
    # in a step (a modality absent from a batch) need find_unused_parameters; buffers of frozen modules never change.
    # Under torchrun without GPUs accelerate only sets up its gloo process group when told to run on the CPU.
    launched = _launched_processes() > 1
    return Accelerator(
        cpu=launched and not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
        **extra,
    )


def end_distributed(accelerator: Any) -> None:
    """Tear the process group down; a group left alive aborts the process at exit."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    try:  # a later run in the same process must not inherit a dead group
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    except Exception:  # noqa: BLE001 - older accelerate keeps no such state
        pass


@contextmanager
def accelerator_session(plan: StagePlan | None = None) -> Iterator[Any]:
    """:func:`make_accelerator`, torn down with :func:`end_distributed` however the block ends."""
    accelerator = make_accelerator(plan)
    try:
        yield accelerator
    finally:
        end_distributed(accelerator)


# -- collectives ---------------------------------------------------------------------------------------------------
def sum_over_processes(accelerator: Any, value: int) -> int:
    """``value`` summed over all processes (a collective call)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def reduce_mean(accelerator: Any, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over all processes (a collective call; every process must pass the same keys)."""
    if accelerator.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def gather_bad(accelerator: Any, bad: BadSamples) -> dict[str, Any]:
    """Bad-sample state over all processes (each collates its own share), each distinct sample counted once.
    A collective call: every process must make it."""
    if accelerator.num_processes == 1:
        return bad.state_dict()
    parts: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, bad.state_dict())
    return BadSamples.merged(parts, keep=bad.keep)


def check_ranks_agree(accelerator: Any, params: Mapping[str, torch.Tensor], stage: str) -> list[str]:
    """Digests of the trained weights (by name) of every process; raise if DDP let them drift apart (a collective
    call)."""
    mine = tensor_digest(params)
    if accelerator.num_processes == 1:
        return [mine]
    sums: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(sums, mine)
    if len(set(sums)) != 1:
        raise TrainingError(f"stage '{stage}': the processes ended with different weights {sums}")
    return sums


# -- FSDP: the frozen LLM sharded ----------------------------------------------------------------------------------
@dataclass
class ShardedLLM:
    """The frozen LLM layers :func:`shard_frozen_llm` sharded: the FSDP root, the layers, and how many weights
    (elements) are sharded in all and held by this process."""

    root: nn.Module
    layers: list[nn.Module]
    parameters: int
    elements: int
    local_elements: int
    reshard_after_forward: bool


_SHARDED: WeakKeyDictionary[nn.Module, ShardedLLM] = WeakKeyDictionary()


def sharded_llm(model: nn.Module) -> ShardedLLM | None:
    """What :func:`shard_frozen_llm` sharded in ``model`` (None when nothing is)."""
    return _SHARDED.get(model)


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _trained_anywhere(model: nn.Module, plan: StagePlan) -> set[int]:
    """``id`` of every parameter some stage of ``plan`` trains, as far as it exists now (LoRA adapters a later stage
    adds are new modules, never sharded)."""
    names = parameter_names(model)
    components = dict(model.named_components()) if hasattr(model, "named_components") else {}  # type: ignore[operator]
    chosen: set[str] = set()
    for stage in plan.stages:
        for selector in stage.trainable:
            lenient = selector if selector.endswith("?") else selector + "?"
            chosen.update(resolve_selector(model, lenient, components=components, names=names))
    return {id(p) for n, p in model.named_parameters() if n in chosen}


def _layer_classes(llm: nn.Module, configured: list[str] | None) -> list[str]:
    if configured:
        return list(configured)
    for module in (llm, getattr(llm, "base_model", None), getattr(getattr(llm, "base_model", None), "model", None)):
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def _decoder_root(llm: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """The module every use of the layers goes through: the LLM's decoder stack when it names one, else the LLM."""
    get_decoder = getattr(llm, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if isinstance(decoder, nn.Module):
        inside = {id(m) for m in decoder.modules()}
        if all(id(layer) in inside for layer in layers):
            return decoder
    return llm


def shard_frozen_llm(model: nn.Module, plan: StagePlan, accelerator: Any) -> ShardedLLM | None:
    """Under ``distributed.strategy: fsdp`` with several processes, shard the frozen weights of every LLM decoder
    layer over the processes with torch's FSDP2 ``fully_shard`` (one FSDP root: the decoder stack); every weight a
    stage of the plan trains, and everything outside the layers, stays whole. A collective call, once per run,
    after the model is built (and restored); returns what was sharded, or None."""
    config = distributed_config(plan)
    if config.strategy != "fsdp":
        return None
    if accelerator.num_processes == 1:
        log.info("distributed.strategy fsdp in a single process: the LLM stays whole")
        return None
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    settings = config.fsdp_settings
    llm = model.llm
    classes = _layer_classes(llm, settings.layers)
    if not classes:
        raise ConfigError(f"the LLM ({type(llm).__name__}) names no layer classes (_no_split_modules); list them in "
                          "distributed.fsdp.layers", field="distributed.fsdp.layers", source=plan.source)
    layers = [m for m in llm.modules() if type(m).__name__ in classes]
    if not layers:
        found = sorted({type(m).__name__ for m in llm.modules() if type(m).__name__.endswith("Layer")})
        raise ConfigError(f"no module of the LLM is a {classes}; layer-like classes in it: {found}",
                          field="distributed.fsdp.layers", source=plan.source)
    keep = _trained_anywhere(model, plan)
    shard = {p for layer in layers for p in layer.parameters() if id(p) not in keep}
    if not shard:
        raise ConfigError("the plan trains every weight of the LLM layers: nothing frozen to shard (use ddp)",
                          field="distributed.strategy", source=plan.source)
    ignored = {p for p in model.parameters() if p not in shard}
    elements = sum(p.numel() for p in shard)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    offload = CPUOffloadPolicy() if settings.cpu_offload else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=settings.reshard_after_forward, offload_policy=offload,
                    ignored_params=ignored)
    root = _decoder_root(llm, layers)
    # the root manages no weight of its own (all ignored): it only makes one FSDP root for the whole run
    fully_shard(root, mesh=mesh, offload_policy=offload, ignored_params=ignored)
    local = sum(p.to_local().numel() for layer in layers for p in layer.parameters() if _is_dtensor(p))
    info = ShardedLLM(root, layers, len(shard), elements, local, settings.reshard_after_forward)
    _SHARDED[model] = info
    log.info("fsdp: %d frozen weights (%d elements) of %d %s layers sharded over %d processes (%d elements here)",
             info.parameters, elements, len(layers), "/".join(classes), accelerator.num_processes, local)
    return info


class _ForwardRecords:
    """FSDP2 records the order of the layers' forwards and, in the next backward, prefetches (all-gathers) layers in
    the reverse order. Forwards that only rank 0 ran (its evaluation) would leave records the other processes lack,
    so their next backward would all-gather different layers and hang; :meth:`forget_new` drops them. These are
    torch's private attributes: when a torch version has none of them there is nothing to drop."""

    def __init__(self, layers: list[nn.Module]) -> None:
        states = [layer._get_fsdp_state() for layer in layers]  # type: ignore[operator]
        self.groups = [g for st in states if (g := getattr(st, "_fsdp_param_group", None)) is not None
                       and hasattr(g, "_post_forward_indices")]
        self.order = getattr(getattr(self.groups[0], "comm_ctx", None), "post_forward_order", None) \
            if self.groups else None
        self.lengths = [len(g._post_forward_indices) for g in self.groups]
        self.order_length = len(self.order) if self.order is not None else 0

    def forget_new(self) -> None:
        for group, n in zip(self.groups, self.lengths):
            del group._post_forward_indices[n:]
        if self.order is not None:
            del self.order[self.order_length:]


@contextmanager
def whole_model(model: nn.Module, accelerator: Any) -> Iterator[None]:
    """Every weight of ``model`` present on every process for the block, so that one process may run it alone
    (rank 0 evaluating a stage). A collective call: every process must enter and leave it. FSDP layers are gathered
    once and kept (not freed after each forward); DeepSpeed ZeRO-3 parameters are gathered; otherwise a no-op."""
    info = sharded_llm(model)
    if info is not None:
        for layer in info.layers:
            layer.set_reshard_after_forward(False, recurse=False)
            layer.unshard()
        records = _ForwardRecords(info.layers)
        try:
            yield
        finally:
            records.forget_new()
            for layer in info.layers:
                layer.reshard()
                layer.set_reshard_after_forward(info.reshard_after_forward, recurse=False)
        return
    if _zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
        return
    yield


@contextmanager
def trained_weights_gathered(model: nn.Module, accelerator: Any, names: set[str]) -> Iterator[None]:
    """The trained parameters ``names`` of ``model`` whole on every process for the block (saving a checkpoint).
    Only DeepSpeed ZeRO-3 partitions them; FSDP and DDP keep them whole. A collective call."""
    if _zero_stage(accelerator) == 3:
        import deepspeed

        params = [p for n, p in model.named_parameters() if n in names]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
        return
    yield


def prepare_stage_module(accelerator: Any, module: nn.Module, optimizer: Any, stage: StageConfig,
                         index: int) -> tuple[Any, Any]:
    """Wrap a stage's forward (a ``StageModule``) for the run's processes; returns ``(module, optimizer)``.

    DDP and FSDP: accelerate's DDP over the trained parts (FSDP-sharded frozen weights are left to FSDP). DeepSpeed:
    the module and optimiser become a DeepSpeed engine configured for this stage's batch and clipping.
    """
    model = getattr(module, "model", module)
    if sharded_llm(model) is not None:
        sharded = [n for n, p in module.named_parameters() if _is_dtensor(p)]
        trained = [n for n in sharded if module.get_parameter(n).requires_grad]
        if trained:
            raise ConfigError(f"stage '{stage.name}' trains weights that FSDP sharded ({trained[:3]}); list them in "
                              "the stage's trainable selectors from the first stage on, or use ddp",
                              field=f"stages.{index}.trainable")
        from torch.nn.parallel import DistributedDataParallel

        # DDP would otherwise broadcast rank 0's shards over the others' at wrap time
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, sharded)
    if _zero_stage(accelerator) is not None:
        _configure_deepspeed_stage(accelerator, model, stage, index)
        module, optimizer = accelerator.prepare(module, optimizer)
        return module, optimizer
    return accelerator.prepare_model(module), optimizer


def describe_distributed(model: nn.Module, accelerator: Any, plan: StagePlan | None) -> dict[str, Any]:
    """What ``summary.json`` says about the run's processes: strategy, processes and, under FSDP, what is sharded."""
    out: dict[str, Any] = {"strategy": distributed_config(plan).strategy, "processes": accelerator.num_processes}
    info = sharded_llm(model)
    if info is not None:
        out["fsdp"] = {"layers": len(info.layers), "sharded_parameters": info.parameters,
                       "sharded_elements": info.elements, "local_elements": info.local_elements}
    stage = _zero_stage(accelerator)
    if stage is not None:
        out["zero_stage"] = stage
    return out


# -- DeepSpeed -------------------------------------------------------------------------------------------------------
_STAGE_KEYS = ("optimizer", "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu",
               "gradient_accumulation_steps", "gradient_clipping")


def _deepspeed_config(plan: StagePlan | None, config: DistributedConfig) -> dict[str, Any]:
    raw = config.deepspeed
    if isinstance(raw, str):
        path = plan.resolve(raw) if plan is not None else raw
        try:
            data = json.loads(open(path).read())  # noqa: PTH123, SIM115 - a plain config read
        except OSError as e:
            raise ConfigError(f"cannot read the DeepSpeed config {path}: {e.strerror or e}",
                              field="distributed.deepspeed", source=plan.source if plan else None) from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"the DeepSpeed config {path} is not valid JSON: {e}", field="distributed.deepspeed",
                              source=plan.source if plan else None) from e
    else:
        data = copy.deepcopy(raw)
    if not isinstance(data, dict):
        raise ConfigError("a DeepSpeed config must be a mapping", field="distributed.deepspeed")
    # xmm sets these from each stage (optimizer, schedule, batch_size, max_grad_norm); "auto" is accepted
    own = sorted(k for k in _STAGE_KEYS if k in data and (k in ("optimizer", "scheduler") or data[k] != "auto"))
    if own:
        raise ConfigError(f"the DeepSpeed config sets {own}; xmm sets them from each stage (optimizer, schedule, "
                          "batch_size, max_grad_norm): remove them or write \"auto\"", field="distributed.deepspeed",
                          source=plan.source if plan else None)
    data["gradient_accumulation_steps"] = 1  # the loop accumulates; DeepSpeed steps on every micro-batch
    return data


def _deepspeed_plugin(plan: StagePlan | None, config: DistributedConfig) -> Any:
    data = _deepspeed_config(plan, config)  # a wrong config is reported first, also where DeepSpeed is missing
    import_optional("deepspeed", extra="deepspeed", purpose="distributed.strategy: deepspeed")
    if not torch.cuda.is_available():
        raise ConfigError("DeepSpeed runs on GPUs only (accelerate uses it only with CUDA devices); on CPUs use "
                          "strategy ddp or fsdp", field="distributed.strategy", source=plan.source if plan else None)
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config=data)
    plugin._xmm_user_config = copy.deepcopy(data)  # each stage starts from the user's config again
    return plugin


def _zero_stage(accelerator: Any) -> int | None:
    """The ZeRO stage of a DeepSpeed run, None for any other."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if plugin is None:
        return None
    return int(plugin.zero_stage)


def _configure_deepspeed_stage(accelerator: Any, model: nn.Module, stage: StageConfig, index: int) -> None:
    """Fill the DeepSpeed config for one stage: its micro-batch per process, no DeepSpeed-side accumulation (the
    loop scales and accumulates) and its clipping; ``auto`` bucket sizes from the LLM's hidden size."""
    if not isinstance(stage.batch_size, int):
        raise ConfigError("with DeepSpeed a stage needs a fixed batch_size (the engine is configured with it)",
                          field=f"stages.{index}.batch_size")
    if stage.grad_accum != 1:
        raise ConfigError("with DeepSpeed a stage steps the optimiser on every micro-batch: set grad_accum to 1 and "
                          "raise batch_size instead", field=f"stages.{index}.grad_accum")
    plugin = accelerator.state.deepspeed_plugin
    config = copy.deepcopy(getattr(plugin, "_xmm_user_config", plugin.deepspeed_config))
    n = accelerator.num_processes
    config.update({"train_micro_batch_size_per_gpu": stage.batch_size // n, "train_batch_size": stage.batch_size,
                   "gradient_accumulation_steps": 1, "gradient_clipping": stage.max_grad_norm or 0.0})
    hidden = getattr(getattr(getattr(model, "llm", None), "config", None), "hidden_size", None)
    zero = config.get("zero_optimization", {})
    if hidden is not None and isinstance(zero, dict):
        for key, value in (("reduce_bucket_size", hidden * hidden),
                           ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
                           ("stage3_param_persistence_threshold", 10 * hidden)):
            if zero.get(key) == "auto":
                zero[key] = int(value)
    plugin.hf_ds_config.config = config
    plugin.deepspeed_config = config
