"""xmm-core registers its own bridges, projectors and decoders through the same hooks as any plugin."""

from __future__ import annotations

from typing import Any

from xmm.hookspecs import hookimpl


@hookimpl
def xmm_bridges() -> dict[str, type]:
    from xmm.bridges import BRIDGES

    return dict(BRIDGES)


@hookimpl
def xmm_projectors() -> dict[str, type]:
    try:
        from xmm.projectors import PROJECTORS
    except ImportError:  # the output side is optional until its module exists
        return {}
    return dict(PROJECTORS)


@hookimpl
def xmm_decoders() -> dict[str, Any]:
    try:
        from xmm.decoders import DECODERS
    except ImportError:
        return {}
    return dict(DECODERS)
