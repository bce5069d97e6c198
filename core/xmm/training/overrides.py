"""What a stage changes on the model while it trains, applied on entry and undone on exit.

:class:`StageOverrides` owns every such change: the autocast mode in ``model.config`` (a stage's
``mixed_precision``), ``model.feature_provider`` (the feature cache), the instance-level ``train`` that keeps frozen
modules in eval mode, the gradient-checkpointing wrappers of the LLM's layers, the training attention kernel and a
stage's ``compile`` (:mod:`xmm.training.compiled`).
On exit the model is as it was before, in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from xmm.training.attention import use_training_attention
from xmm.training.compiled import compile_llm
from xmm.training.selection import (
    disable_layer_checkpointing,
    enable_layer_checkpointing,
    install_mode_guard,
    remove_mode_guard,
)

_AUTOCAST = {"bf16": "bf16", "no": "off"}  # a stage's mixed_precision -> the model config's autocast ("auto": keep)


class StageOverrides:
    """A context manager over ``model`` for one stage; ``module`` (the stage's wrapped forward) is put in train mode
    on entry. ``feature_provider``: what the model encodes media through during the stage (None: its encoders)."""

    def __init__(self, model: Any, module: Any, *, mixed_precision: str, feature_provider: Any,
                 gradient_checkpointing: bool, compile: bool | str = False) -> None:
        self.model = model
        self.module = module
        self.mixed_precision = mixed_precision
        self.feature_provider = feature_provider
        self.gradient_checkpointing = gradient_checkpointing
        self.compile = compile
        self._uncompile: Callable[[], None] = lambda: None
        self.saved_autocast: str | None = None
        self._saved_provider: Any = None
        self._restore_attention: Callable[[], None] = lambda: None

    def __enter__(self) -> StageOverrides:
        model = self.model
        self.saved_autocast = model.config.autocast
        if self.mixed_precision in _AUTOCAST:
            model.config = model.config.model_copy(update={"autocast": _AUTOCAST[self.mixed_precision]})
        self._saved_provider = model.feature_provider
        model.feature_provider = self.feature_provider
        if self.gradient_checkpointing:
            enable_layer_checkpointing(model.llm)
        self._restore_attention = use_training_attention(model.llm)
        if self.compile:
            self._uncompile = compile_llm(model, self.compile)
        install_mode_guard(model)
        self.module.train()
        return self

    def __exit__(self, *exc: object) -> None:
        model = self.model
        self._uncompile()
        self._restore_attention()
        remove_mode_guard(model)
        if self.gradient_checkpointing:
            disable_layer_checkpointing(model.llm)
        model.config = model.config.model_copy(update={"autocast": self.saved_autocast})
        model.feature_provider = self._saved_provider
        model.eval()

    @contextmanager
    def original_config(self) -> Iterator[None]:
        """Inside the stage: the model's own config for the block (what a checkpoint saves, not the stage's autocast)."""
        current = self.model.config
        self.model.config = current.model_copy(update={"autocast": self.saved_autocast})
        try:
            yield
        finally:
            self.model.config = current
