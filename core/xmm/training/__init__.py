"""``xmm.training``: staged training of bridges (and LoRA) from a YAML ``StagePlan``.

``train(plan)`` runs a plan on Hugging Face accelerate (``torchrun`` scales it out); ``evaluate(model, manifest)``
scores generated answers; ``build_cache(plan)`` fills the frozen-encoder feature cache ahead of time;
``get_objective`` finds a training loss by name (plugins add theirs through the ``xmm_objectives`` hook, see
:mod:`xmm.objective`). Presets: ``xllm``, ``chatbridge``, ``nextgpt``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# imported eagerly: the submodule `evaluate` would otherwise shadow the function of the same name
from xmm.training.evaluate import evaluate
from xmm.training.objectives import available_objectives, get_objective, register_objective
from xmm.training.plan import StageConfig, StagePlan, load_plan
from xmm.training.presets import PRESETS

if TYPE_CHECKING:
    from xmm.training.cache_build import build_cache
    from xmm.training.loop import TrainResult, train

__all__ = [
    "PRESETS",
    "StageConfig",
    "StagePlan",
    "TrainResult",
    "available_objectives",
    "build_cache",
    "evaluate",
    "get_objective",
    "load_plan",
    "register_objective",
    "train",
]


def __getattr__(name: str) -> Any:
    # the loop pulls in accelerate; load it only when asked for
    if name in ("train", "TrainResult"):
        from xmm.training import loop

        return getattr(loop, name)
    if name == "build_cache":
        from xmm.training.cache_build import build_cache

        return build_cache
    raise AttributeError(f"module 'xmm.training' has no attribute {name!r}")
