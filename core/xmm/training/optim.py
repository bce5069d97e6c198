"""Optimiser (with per-group learning rates) and learning-rate schedule of a stage."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from xmm.errors import ConfigError
from xmm.training.plan import OptimizerConfig, ScheduleConfig
from xmm.training.selection import Selection, resolve_selector


def param_groups(model: nn.Module, selection: Selection, cfg: OptimizerConfig, *, field_prefix: str,
                 source: str | None = None) -> list[dict[str, Any]]:
    """Optimiser groups over the selected parameters only (frozen ones get no optimiser state).

    A parameter takes the lr / weight decay of the first ``cfg.groups`` entry that selects it, else the defaults.
    Parameters with fewer than 2 dimensions (biases, norms, scalars) get no weight decay.
    """
    owner: dict[str, int] = {}
    for gi, group in enumerate(cfg.groups):
        for si, sel in enumerate(group.params):
            names = resolve_selector(model, sel, field_name=f"{field_prefix}.groups.{gi}.params.{si}", source=source)
            outside = [n for n in names if n not in selection.params]
            if outside:
                raise ConfigError(
                    f"selector {sel!r} picks parameters that the stage does not train (e.g. {outside[0]}); "
                    "list them under 'trainable' too", field=f"{field_prefix}.groups.{gi}.params.{si}", source=source,
                )
            for n in names:
                owner.setdefault(n, gi)
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in selection.params.items():
        buckets.setdefault((owner.get(name, -1), p.dim() >= 2), []).append(p)
    groups = []
    for (gi, decays), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        g = cfg.groups[gi] if gi >= 0 else None
        lr = g.lr if g is not None and g.lr is not None else cfg.lr
        wd = g.weight_decay if g is not None and g.weight_decay is not None else cfg.weight_decay
        groups.append({"params": params, "lr": lr, "weight_decay": wd if decays else 0.0, "xmm_group": gi})
    return groups


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """True when torch's fused Adam/AdamW kernel can take every parameter (floating point, on the CPU or CUDA)."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam/AdamW use torch's fused kernel where it applies: one pass over each parameter instead of the ~10 of the
    foreach form (the same update up to float rounding)."""
    clean = [{k: v for k, v in g.items() if k != "xmm_group"} for g in groups]
    if cfg.type in ("adamw", "adam"):
        cls = torch.optim.AdamW if cfg.type == "adamw" else torch.optim.Adam
        impl = {"fused": True} if _fusable(clean) else {"foreach": True}
        return cls(clean, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **impl)
    return torch.optim.SGD(clean, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr before optimiser step ``step`` (0-based) of ``total``."""
    warmup = max(cfg.warmup_steps, int(round(cfg.warmup_ratio * total)))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.type == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = cfg.min_lr_ratio
    if cfg.type == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))


def rebase_lrs(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
               base_lrs: list[float]) -> bool:
    """Give a scheduler restored from a checkpoint the plan's base learning rates (one per group, in order) and set
    each group's rate from the plan's schedule at the restored step, keeping the optimiser's moments; returns whether
    a base rate changed. Without this a resumed run would keep the rates the checkpoint was written with (and one
    step of the old schedule), whatever the plan now says; with an unchanged plan the rates come out the same."""
    if len(base_lrs) != len(optimizer.param_groups):
        return False
    changed = list(scheduler.base_lrs) != list(base_lrs)
    scheduler.base_lrs = list(base_lrs)
    for group, base, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)  # LambdaLR's own formula, so nothing moves when unchanged
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    return changed
