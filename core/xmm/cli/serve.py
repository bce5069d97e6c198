"""``xmm serve CHECKPOINT``: an OpenAI-compatible API (and, with ``--ui``, a web chat) for a trained model."""

from __future__ import annotations

import os
from pathlib import Path

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        target: str = typer.Argument(..., metavar="CHECKPOINT", help="Run folder, model folder, training checkpoint, "
                                     "Hub repo id or model config YAML."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one)."),
        api_key: str | None = typer.Option(None, "--api-key", envvar="XMM_API_KEY", show_envvar=True,
                                           help="Clients must send 'Authorization: Bearer KEY'."),
        ui: bool = typer.Option(False, "--ui", help="Serve the web chat at http://HOST:PORT/."),
        allow_files: Path | None = typer.Option(None, "--allow-files", file_okay=False,
                                                help="Folder whose files requests may name by path (default: none)."),
        model_name: str | None = typer.Option(None, "--model-name", help="Model id clients see (default: the "
                                              "checkpoint's folder name)."),
        max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="Requests answered together."),
        max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", min=1, help="Largest max_tokens a request "
                                             "may ask for."),
        max_body_mb: float = typer.Option(32.0, "--max-body-mb", min=0.001, help="Largest request body, in MiB."),
        control_tokens: str = typer.Option("escape", "--control-tokens", help="Chat-template control tokens typed "
                                           "in messages: escape (keep as text) or refuse (400)."),
        revision: str | None = typer.Option(None, "--revision", help="Hub revision of a checkpoint repo."),
    ) -> None:
        """Serve CHECKPOINT: GET /v1/models, POST /v1/chat/completions (streamed or not), optional web chat."""
        from xmm.errors import ConfigError
        from xmm.resolver import resolve_checkpoint
        from xmm.serve.config import ServeConfig

        try:
            config = ServeConfig(host=host, port=port, api_key=api_key or None, ui=ui, allow_files=allow_files,
                                 model_name=model_name, max_batch_size=max_batch_size,
                                 max_tokens_limit=max_tokens_limit, max_body_bytes=int(max_body_mb * (1 << 20)),
                                 control_tokens=control_tokens)
        except ValueError as e:  # pydantic's ValidationError: name the option
            err = e.errors()[0] if hasattr(e, "errors") else {"loc": (), "msg": str(e)}
            field = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
            raise ConfigError(str(err["msg"]), field=field) from None
        if host not in LOOPBACK and not config.api_key:
            typer.secho(f"warning: listening on {host} without --api-key: anyone who can reach this machine can use "
                        "the model", fg=typer.colors.YELLOW, err=True)
        resolved = resolve_checkpoint(target, revision=revision)  # a bad target fails before any model loads
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = resolved.load(on_warning=lambda m: typer.secho(f"warning: {m}", fg=typer.colors.YELLOW, err=True))
        from xmm.serve.app import create_app
        from xmm.serve.server import uvicorn_server

        if config.port == 0:  # pick the free port now, so that the line below names the real one
            config = config.model_copy(update={"port": _free_port(config.host)})
        name = config.model_name or _default_name(resolved)
        server = uvicorn_server(create_app(model, config, name=name), config)
        shown = f"[{config.host}]" if ":" in config.host else config.host
        typer.echo(f"serving '{name}' ({', '.join(sorted(model.specs)) or 'text only'}) on http://{shown}:{config.port}"
                   f"/v1" + (f"; web chat at http://{shown}:{config.port}/" if ui else ""), err=True)
        server.run()


def _free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _default_name(resolved: object) -> str:
    """The checkpoint's own name: the repo id, the run folder's name (not ``model``), or the config file's stem."""
    repo = getattr(resolved, "repo_id", None)
    if repo:
        return str(repo)
    path = Path(getattr(resolved, "path", None) or "xmm")
    if getattr(resolved, "kind", "") == "config":
        return path.stem
    parts = [p for p in path.resolve().parts if p not in ("model", os.sep)]
    if getattr(resolved, "kind", "") == "stage" and len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}/{parts[-1]}"
    return parts[-1] if parts else "xmm"
