"""xmm-core registers its own bridges, projectors and decoders through the same hooks as any plugin (training's
objectives come from ``xmm.training.core_plugin``)."""

from __future__ import annotations

from typing import Any

from xmm.hookspecs import hookimpl


@hookimpl
def xmm_bridges() -> dict[str, type]:
    from xmm.bridges import BRIDGES

    return dict(BRIDGES)


@hookimpl
def xmm_projectors() -> dict[str, type]:
    from xmm.projectors import PROJECTORS

    return dict(PROJECTORS)


@hookimpl
def xmm_decoders() -> dict[str, Any]:
    from xmm.decoders import DECODERS

    return dict(DECODERS)
