"""Running the app under uvicorn: in the foreground (``xmm serve``) or in a background thread (tests, benchmarks,
notebooks), on a fixed port or a free one."""

from __future__ import annotations

import threading
import time
from typing import Any

from xmm.errors import MissingDependencyError, XmmError
from xmm.serve.config import ServeConfig


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as e:
        raise MissingDependencyError("uvicorn", extra="serve", purpose="xmm serve") from e
    return uvicorn


def uvicorn_server(app: Any, config: ServeConfig, *, log_level: str = "info") -> Any:
    """A ``uvicorn.Server`` for ``app`` on ``config.host:config.port`` (port 0: a free one, see :func:`bound_port`)."""
    uvicorn = _uvicorn()
    # timeout_graceful_shutdown: a client holding a stream open must not keep Ctrl-C waiting. timeout_keep_alive:
    # longer than clients keep an idle pooled connection (httpx, under the openai client: 5 s), so a client never
    # sends a request on a connection the server is closing at that moment (a connection error, not an answer)
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                         timeout_graceful_shutdown=5, timeout_keep_alive=30, access_log=False))


def bound_port(server: Any) -> int:
    """The port a started ``uvicorn.Server`` listens on."""
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    raise XmmError("the server is not listening")


class BackgroundServer:
    """``with BackgroundServer(app, config) as srv: ... srv.url ...``: uvicorn in a daemon thread until the block
    ends."""

    def __init__(self, app: Any, config: ServeConfig | None = None, *, startup_timeout: float = 60.0,
                 log_level: str = "warning") -> None:
        self.config = config or ServeConfig(port=0)
        self.server = uvicorn_server(app, self.config, log_level=log_level)
        self.startup_timeout = startup_timeout
        self.thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self.server.config.install_signal_handlers = False  # only the main thread may install them
        self.thread = threading.Thread(target=self.server.run, name="xmm-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise XmmError(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.02)
        self.port = bound_port(self.server)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
            self.thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
