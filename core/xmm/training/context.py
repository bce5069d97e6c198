"""What the stages of a run share: the plan, the model, the accelerator, the feature cache and the bad-sample record."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from xmm.training.cache import CachedFeatureProvider, FeatureCache
from xmm.training.checkpointing import seed_everything
from xmm.training.data import BadSamples
from xmm.training.plan import StagePlan


def build_model(plan: StagePlan, device: torch.device | None = None) -> Any:
    """The plan's model, built deterministically from ``plan.seed`` (frozen random parts are the same every time)."""
    from xmm.model import MultimodalLM

    cfg = plan.multimodal_config()
    seed_everything(plan.seed)
    if device is None or cfg.device is not None:
        return MultimodalLM.from_config(cfg)
    # this process's device (cuda:<local rank> under torchrun), not written into the checkpoint's config
    model = MultimodalLM.from_config(cfg.model_copy(update={"device": str(device)}))
    model.config = model.config.model_copy(update={"device": None})
    return model


@dataclass
class RunContext:
    """The pieces every stage of a run uses. ``trained``: names of the parameters trained so far (what
    ``trained.safetensors`` keeps); ``bad``: this process's bad-sample record; ``prepared``: the stages' prepared
    records by data (:func:`xmm.training.stage_data.build_stage_data`)."""

    plan: StagePlan
    model: Any
    accelerator: Any
    cache: FeatureCache
    provider: CachedFeatureProvider
    bad: BadSamples
    trained: set[str] = field(default_factory=set)
    # a stage's records prepared once (tokenised, small encoder inputs), reused by later stages reading the same data
    prepared: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, plan: StagePlan, model: Any, accelerator: Any, bad: BadSamples | None = None) -> RunContext:
        """A context over the plan's feature cache; each process writes cache shards under its own name."""
        writer = f"rank{accelerator.process_index}-{os.getpid()}-{time.time_ns() % 10**8}"
        cache = FeatureCache(plan.cache_path, writer=writer)
        provider = CachedFeatureProvider(model, cache, compute=model.encode_media)
        return cls(plan, model, accelerator, cache, provider, bad if bad is not None else BadSamples(plan.on_bad_sample))

    @property
    def main(self) -> bool:
        """True on the process that writes logs, checkpoints and the final model."""
        return bool(self.accelerator.is_main_process)

    def close(self) -> None:
        """Flush and close the feature cache; the model no longer reads through it."""
        self.cache.close()
        self.provider.release()
        self.model.feature_provider = None
