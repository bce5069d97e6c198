"""``xmm`` entry point. Each sub-command lives in its own module with a ``register(app)`` function."""

from __future__ import annotations

import errno
import importlib
import logging
import sys

import typer

from xmm import __version__
from xmm.errors import XmmError
from xmm.progress import quiet_third_party_bars

app = typer.Typer(
    name="xmm",
    help="Give any LLM new senses: list plugins, build caches, train bridges in stages, evaluate, chat, share.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# modules under xmm.cli that add commands; a module that does not exist yet is simply not offered
COMMAND_MODULES = ("plugins", "chat", "train", "cache", "evaluate", "push", "new", "demo", "data", "serve", "init")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xmm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level and show the Hugging Face "
                                 "libraries' own progress bars."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_third_party_bars()  # xmm shows its own progress; "Loading weights" bars only say that loading happened


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"xmm.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"xmm.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; an :class:`XmmError` prints its message (no traceback) and exits with status 1, and so does an
    ``OSError`` of the machine (disk full, read-only or missing folder) met outside xmm's own file helpers."""
    from xmm.io import ENVIRONMENT_ERRNOS, storage_error

    try:
        app(args=argv, standalone_mode=True)
    except XmmError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        typer.secho(f"error: {storage_error(e, e.filename or 'a file', 'write' if e.errno in _WRITE_ERRNOS else 'use')}",
                    fg=typer.colors.RED, err=True)
        sys.exit(1)


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


if __name__ == "__main__":
    main()
