"""``xmm.serve``: an OpenAI-compatible server (and a web chat) for a :class:`~xmm.model.MultimodalLM`.

``create_app(model, ServeConfig(...))`` builds the FastAPI app; ``BackgroundServer(app, config)`` runs it in a thread;
``xmm serve CHECKPOINT`` runs it from the command line. Needs the ``serve`` extra (FastAPI + uvicorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xmm.serve.config import ServeConfig

__all__ = ["BackgroundServer", "ServeConfig", "create_app"]

if TYPE_CHECKING:
    from xmm.serve.app import create_app
    from xmm.serve.server import BackgroundServer


def __getattr__(name: str) -> Any:
    # the app and the server load FastAPI/uvicorn: only when asked for
    if name == "create_app":
        from xmm.serve.app import create_app

        return create_app
    if name == "BackgroundServer":
        from xmm.serve.server import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module 'xmm.serve' has no attribute {name!r}")
