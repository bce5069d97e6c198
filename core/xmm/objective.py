"""The objective contract: a named training loss that a stage combines with others by weight.

An objective is ``fn(model, batch, output, **params) -> Tensor | None``: a scalar loss, or ``None`` when it does not
apply to this batch (e.g. a Q-Former loss on a batch without Q-Former media). ``output`` is ``model(batch)``, or
``None`` when no objective of the stage declared ``needs_output`` (stage-1 bridge alignment then never runs the LLM).

A plugin brings objectives by returning them from its ``xmm_objectives`` hook::

    @objective("my_loss", needs_output=False)
    def my_loss(model, batch, output, scale: float = 1.0):
        "One-line description shown by ``xmm plugins``."
        ...

    @hookimpl
    def xmm_objectives():
        return {my_loss.name: my_loss}

:func:`objective` only builds the :class:`Objective`; nothing is registered until the registry calls the hook.
Objectives of one step can share work through :func:`step_memo` (a dict that lives for one micro-batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from xmm.errors import ConfigError

ObjectiveFn = Callable[..., "torch.Tensor | None"]

_MEMO: ContextVar[dict[str, Any] | None] = ContextVar("xmm_objective_memo", default=None)


@dataclass(frozen=True)
class Objective:
    """A training loss a stage can name.

    ``needs_output``: it reads ``model(batch)``; ``needs_hidden_states``: it reads the LLM hidden states (the model
    is then called with ``output_hidden_states=True``; implies ``needs_output``). ``token_mean``: ``fn`` returns a
    mean over the batch's answer tokens, which the loop re-weights by each micro-batch's share of the optimiser
    step's tokens over all processes (so N processes and gradient accumulation compute the one-batch mean exactly);
    other objectives are averaged per micro-batch.
    """

    name: str
    fn: ObjectiveFn
    needs_output: bool = True
    needs_hidden_states: bool = False
    description: str = ""
    token_mean: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"an objective needs a non-empty name, got {self.name!r}")
        if not callable(self.fn):
            raise ConfigError(f"objective '{self.name}': fn must be callable, got {type(self.fn).__name__}")
        if self.needs_hidden_states and not self.needs_output:
            object.__setattr__(self, "needs_output", True)  # hidden states come with the model's output

    def __call__(self, model: Any, batch: Any, output: Any, **params: Any) -> torch.Tensor | None:
        return self.fn(model, batch, output, **params)


def objective(
    name: str,
    *,
    needs_output: bool = True,
    needs_hidden_states: bool = False,
    description: str = "",
    token_mean: bool = False,
) -> Callable[[ObjectiveFn], Objective]:
    """Decorator: turn ``fn`` into an :class:`Objective` named ``name`` (not registered anywhere).

    ``description`` defaults to the first line of ``fn``'s docstring.
    """

    def build(fn: ObjectiveFn) -> Objective:
        doc = description or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        return Objective(name, fn, needs_output, needs_hidden_states, doc, token_mean)

    return build


@contextlib.contextmanager
def objective_step() -> Iterator[dict[str, Any]]:
    """Open a fresh per-step memo (the training loop wraps each micro-batch's objectives in it)."""
    token = _MEMO.set({})
    try:
        yield _MEMO.get()  # type: ignore[misc]
    finally:
        _MEMO.reset(token)


def step_memo() -> dict[str, Any]:
    """The current step's shared dict (a throwaway one outside :func:`objective_step`)."""
    memo = _MEMO.get()
    return memo if memo is not None else {}
