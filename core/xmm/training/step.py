"""One optimiser step: the stage's forward (:class:`StageModule`, what DDP wraps), gradient accumulation over
micro-batches, clipping, the optimiser and scheduler steps, and the step's loss parts (:class:`StepLosses`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xmm.errors import TrainingError
from xmm.objective import Objective, objective_step
from xmm.training.data import BadSamples, record_skipped
from xmm.training.distributed import sum_over_processes
from xmm.training.objectives import count_answer_tokens, get_objective
from xmm.training.plan import StageConfig

if TYPE_CHECKING:
    from xmm.training.stage import PreparedStage

WeightedObjective = tuple[Objective, float, dict[str, Any]]


def stage_objectives(stage: StageConfig) -> list[WeightedObjective]:
    """The stage's objectives with a positive weight: ``(objective, weight, params)`` in plan order."""
    return [(get_objective(o.name), o.weight, dict(o.params)) for o in stage.objectives if o.weight > 0]


class StageModule(nn.Module):
    """One stage's forward: the model (when an objective needs it) and the weighted objectives -> total loss.

    This is the module DDP wraps, so every objective - also those that bypass the LLM, like the Q-Former's stage-1
    losses - runs inside the wrapped forward and its gradients are all-reduced.
    """

    def __init__(self, model: nn.Module, objectives: list[WeightedObjective], stage: str) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.stage = stage
        self.needs_output = any(o.needs_output for o, _, _ in objectives)
        self.needs_hidden = any(o.needs_hidden_states for o, _, _ in objectives)

    def forward(self, batch: Any, token_scale: float = 1.0, micro_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """``loss``: the weighted objectives of ``batch`` scaled for accumulation (token-mean objectives by
        ``token_scale``, the others by ``micro_scale``); ``loss/<name>``: each objective's plain value."""
        model = self.model
        if batch is None:
            # every example of this process's share was unusable: contribute zero gradients so that the other
            # processes' all-reduce still completes
            zero = sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros(()))
            return {"loss": zero}
        with model.autocast():
            output = None
            if self.needs_output:
                output = model(batch, output_hidden_states=self.needs_hidden, logits="labels")
            parts: dict[str, tuple[torch.Tensor, float]] = {}
            with objective_step() as memo:
                memo["stage_objectives"] = [o.name for o, _, _ in self.objectives]
                for obj, weight, params in self.objectives:
                    value = obj(model, batch, output, **params)
                    if value is not None:
                        scale = token_scale if obj.token_mean else micro_scale
                        parts[obj.name] = (value, weight * scale)
        if not parts:
            names = ", ".join(o.name for o, _, _ in self.objectives)
            raise TrainingError(
                f"stage '{self.stage}': none of its objectives ({names}) applies to this batch - e.g. Q-Former losses "
                "need a qformer bridge with text_branch: true, cif_quantity a CIF bridge, lm answer tokens"
            )
        total = sum(w * v.float() for v, w in parts.values())
        out: dict[str, torch.Tensor] = {"loss": total}  # type: ignore[dict-item]
        out.update({f"loss/{k}": v.detach().float() for k, (v, _) in parts.items()})
        return out


class StepLosses:
    """The loss parts of one optimiser step, summed on the device as the micro-batches come; :meth:`read` (which
    waits for the device) is called on logging steps only."""

    def __init__(self, objectives: list[WeightedObjective], grad_accum: int) -> None:
        self.objectives = objectives
        self.grad_accum = grad_accum
        self.parts: dict[str, torch.Tensor] = {}
        self.grad_norm: torch.Tensor | None = None

    def add(self, out: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's ``loss/<name>`` values (no read of the device)."""
        for k, v in out.items():
            if k != "loss":
                v = v.detach().float()
                self.parts[k] = self.parts[k] + v if k in self.parts else v

    def read(self) -> dict[str, float]:
        """``loss/<name>`` averaged over the micro-batches, ``loss`` (their weighted sum) and ``grad_norm``."""
        keys = list(self.parts)
        host = torch.stack([self.parts[k] for k in keys]).cpu().tolist() if keys else []
        sums = {k: v / self.grad_accum for k, v in zip(keys, host)}
        sums["loss"] = sum(w * sums.get(f"loss/{o.name}", 0.0) for o, w, _ in self.objectives)
        if self.grad_norm is not None:
            sums["grad_norm"] = float(self.grad_norm)
        return sums


def next_micro_batches(stage: PreparedStage, bad: BadSamples) -> list[Any]:
    """The step's ``grad_accum`` micro-batches from the stage's stream; samples their collator dropped are recorded
    in ``bad``, and a micro-batch with nothing usable is ``None``."""
    return [record_skipped(stage.batches.next(), bad) for _ in range(stage.config.grad_accum)]


def optimizer_step(stage: PreparedStage, micro_batches: Sequence[Any], accelerator: Any) -> StepLosses:
    """Forward and backward every micro-batch (gradients synchronised on the last), clip, step the optimiser and
    the scheduler. Token-mean objectives are weighted by each micro-batch's share of the step's answer tokens over
    all processes, so the result equals one process computing the whole global batch."""
    cfg = stage.config
    n_proc = accelerator.num_processes
    tokens = [count_answer_tokens(b) for b in micro_batches]
    step_tokens = max(sum_over_processes(accelerator, sum(tokens)), 1)
    losses = StepLosses(stage.objectives, len(micro_batches))
    for micro, batch in enumerate(micro_batches):
        sync = micro == len(micro_batches) - 1
        with accelerator.no_sync(stage.module) if not sync and n_proc > 1 else nullcontext():
            # DDP averages gradients over processes, hence the factor n_proc in the token weight
            out = stage.module(batch, token_scale=tokens[micro] * n_proc / step_tokens,
                               micro_scale=1.0 / len(micro_batches))
            loss = out["loss"]
            if not loss.requires_grad:
                # no trainable parameter took part (e.g. the batch holds only media of frozen bridges): a zero that
                # reaches every trained parameter, so that the step (and the other processes) go on
                loss = loss + sum(p.sum() for p in stage.params) * 0.0
            accelerator.backward(loss)
        losses.add(out)
    if cfg.max_grad_norm is not None:
        losses.grad_norm = torch.nn.utils.clip_grad_norm_(stage.params, cfg.max_grad_norm)
    stage.optimizer.step()
    stage.scheduler.step()
    stage.optimizer.zero_grad(set_to_none=True)
    return losses
