"""pluggy hook specifications (project name ``xmm``).

A plugin is a module (or object) with functions marked ``@xmm.hookimpl``, exposed through a setuptools entry point in
group ``xmm``. Each hook returns what the plugin adds; names must be unique across plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    from xmm.bridges.base import Bridge
    from xmm.decoder import Decoder
    from xmm.encoder import Encoder
    from xmm.modality import ModalitySpec

PROJECT = "xmm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def xmm_modalities() -> list[ModalitySpec]:
    """Return the modalities this plugin adds."""


@hookspec
def xmm_encoders() -> dict[str, Callable[..., Encoder]]:
    """Return encoder factories by name; each is called with the encoder config as keyword arguments."""


@hookspec
def xmm_bridges() -> dict[str, type[Bridge]]:
    """Return bridge classes by type name (the ``type`` field of their config)."""


@hookspec
def xmm_projectors() -> dict[str, type[Any]]:
    """Return output-projector classes by type name (signal-token hidden states -> decoder conditioning)."""


@hookspec
def xmm_decoders() -> dict[str, Callable[..., Decoder]]:
    """Return decoder factories by name; each is called with the decoder config as keyword arguments."""


@hookspec
def xmm_objectives() -> dict[str, Any]:
    """Return training objectives by name (``xmm.objective.Objective`` objects) that a stage can name."""


@hookspec
def xmm_recipes() -> dict[str, Any]:
    """Return recommended training recipes by name (``xmm.recipes.Recipe``): the stages, bridge, objectives and
    step counts a modality's author recommends; ``xmm init plan`` and the demo build plans from them."""


@hookspec
def xmm_demo_tasks() -> dict[str, Any]:
    """Return demo tasks by name (``xmm.recipes.DemoTask``): synthetic data with known answers, a recipe and a
    metric, which ``xmm demo`` trains and scores."""
