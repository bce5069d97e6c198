"""``xmm chat CHECKPOINT_OR_CONFIG [--MODALITY P ...] [--media MODALITY=P ...] ["PROMPT"]``: answer once, or chat
interactively (streamed).

Every installed modality gets a ``--NAME PATH`` option (``--image``, ``--device``, ...: the same as ``--media
NAME=PATH``), made from the registry when ``chat`` parses its arguments or shows its help, so other commands do not
pay for loading plugins.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

log = logging.getLogger(__name__)

_FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ORDER_KEY = "xmm.chat.media_flags"


class MediaCommand(TyperCommand):
    """A command with one ``--NAME PATH`` option per installed modality, added before the first parse or help.

    The options are copies of the command's ``--media`` option; their files are handed to the command as
    ``--media NAME=PATH`` items, modalities in the order their options first appear, before the ``--media`` ones. A
    modality whose name would clash with another option keeps only the ``--media`` form.
    """

    _media_flags: dict[str, str] | None = None  # option name -> modality

    def get_params(self, ctx: Any) -> list[Any]:
        if self._media_flags is None:
            self._media_flags = self._add_media_flags()
        return super().get_params(ctx)

    def _add_media_flags(self) -> dict[str, str]:
        from xmm.registry import get_registry

        template = next(p for p in self.params if p.name == "media")
        taken = {o for p in self.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        flags: dict[str, str] = {}
        new = []
        for name in get_registry().modalities:
            if f"--{name}" in taken or not _FLAG_NAME.fullmatch(name):
                continue
            opt = copy.copy(template)
            opt.name = f"media_flag_{len(flags)}"
            opt.opts, opt.secondary_opts = [f"--{name}"], []
            opt.help = f"{'An' if name[:1] in 'aeiou' else 'A'} {name} file (repeatable; same as --media {name}=PATH)."
            opt.callback = _remember_order
            flags[opt.name] = name
            new.append(opt)
        at = self.params.index(template)
        self.params[at:at] = new
        return flags

    def invoke(self, ctx: Any) -> Any:
        flags = self._media_flags or {}
        order = ctx.meta.pop(_ORDER_KEY, [])
        for name in flags:
            ctx.params.pop(name, None)
        ctx.params["media"] = [f"{flags[n]}={p}" for n, paths in order for p in paths] + list(ctx.params.get("media") or ())
        return super().invoke(ctx)


def _remember_order(ctx: Any, param: Any, value: Any) -> Any:
    # click processes options in the order they first appear on the command line
    if value:
        ctx.meta.setdefault(_ORDER_KEY, []).append((param.name, list(value)))
    return value


def interactive_help(model: Any) -> str:
    """The interactive chat's help line, naming the model's modalities."""
    attach = ", ".join(f"/{m} PATH" for m in model.specs) or "(this model takes no media)"
    return (f"Interactive chat: type a message; {attach} attaches media to the next message, /reset clears the "
            "history, /exit quits.")


def load_model(target: str, *, revision: str | None = None) -> Any:
    """Any checkpoint name :mod:`xmm.resolver` knows (a run, a model folder, a training checkpoint, a Hub repo id, or a
    config YAML: untrained bridges, with a warning)."""
    from xmm.resolver import load_model as resolve_and_load

    return resolve_and_load(target, revision=revision,
                            on_warning=lambda m: typer.secho(f"warning: {m}", fg=typer.colors.YELLOW, err=True))


def check_text(text: str, what: str = "the prompt") -> str:
    """``text`` if it is valid Unicode; text decoded from invalid UTF-8 (argv and stdin keep such bytes as lone
    surrogates) raises :class:`~xmm.errors.PromptError` saying where."""
    from xmm.errors import PromptError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character U+{ord(bad):04X}"
        raise PromptError(f"{what} is not valid UTF-8 text ({byte} at character {e.start}); check the terminal's "
                          "encoding") from None
    return text


def check_media_file(name: str, path: str) -> None:
    """Refuse a missing, special (FIFO, device, folder) or over-limit media file from its ``stat``, never opening it."""
    from xmm.limits import check_file

    check_text(path, f"the {name} path")
    check_file(Path(path).expanduser(), modality=name)


def build_turn(model: Any, prompt: str, media: list[tuple[str, str]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A user message for ``prompt`` plus media parts. Placeholders written in the prompt are filled in order;
    otherwise the media come first, then the text. Returns ``(message, media_for_literal_placeholders)``."""
    parts = [{"type": m, "path": str(Path(p).expanduser().resolve())} for m, p in media]
    if any(s.placeholder in prompt for s in model.specs.values()):
        return {"role": "user", "content": prompt}, parts
    return {"role": "user", "content": [*parts, {"type": "text", "text": prompt}]}, []


def _echo_stream(pieces: Any) -> str:
    out = []
    for piece in pieces:
        out.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(out)


def _gen_kwargs(max_new_tokens: int, sample: bool, temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": temperature, "top_p": top_p, "seed": seed}


def report_outputs(result: Any, output_dir: Path) -> list[Path]:
    """Save what the decoders produced for an answer (images, audio...) into ``output_dir`` and print each path;
    outputs that are not files (device commands) are printed as they are."""
    if result is None or not getattr(result, "outputs", None):
        return []
    from xmm.model.outputs import save_produced

    paths = []
    for item, path in save_produced(result.outputs, output_dir):
        if path is None:
            typer.echo(f"[{item.modality}] {item.value}")
        else:
            typer.echo(f"[{item.modality}] saved {path}")
            paths.append(path)
    return paths


def _read_line() -> str:
    # the prompt goes to stderr so that stdout carries only the answers (pipe-friendly)
    sys.stderr.write("> ")
    sys.stderr.flush()
    if getattr(sys.stdin, "errors", "strict") != "surrogateescape" and hasattr(sys.stdin, "reconfigure"):
        # undecodable bytes become lone surrogates (check_text names them) instead of ending the session
        sys.stdin.reconfigure(errors="surrogateescape")
    return input()


def interactive(model: Any, media: list[tuple[str, str]], gen: dict[str, Any], *, input_fn: Any = _read_line,
                output_dir: Path | None = None) -> None:
    """The interactive loop: streams answers, keeps the history, ``/reset``, ``/exit``, ``/MODALITY PATH``.

    A turn that fails (bad text, a media file that cannot be used, anything else the user can cause) prints the error
    and drops that turn's attachments, so the next turn starts clean; the session goes on.
    """
    from xmm.errors import XmmError

    typer.echo(interactive_help(model), err=True)
    history: list[dict[str, Any]] = []
    pending = list(media)
    while True:
        try:
            line = check_text(input_fn(), "the line").strip()
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return
        except (XmmError, UnicodeDecodeError) as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            continue
        if not line:
            continue
        if line in {"/exit", "/quit"}:
            return
        if line == "/reset":
            history, pending = [], []
            typer.echo("(history cleared)", err=True)
            continue
        if line.startswith("/"):
            cmd, _, arg = line[1:].partition(" ")
            if cmd in model.specs and arg.strip():
                try:
                    check_media_file(cmd, arg.strip())
                except XmmError as e:
                    typer.secho(f"error: {e} (not attached)", fg=typer.colors.RED, err=True)
                    continue
                pending.append((cmd, arg.strip()))
                typer.echo(f"({cmd} attached to the next message)", err=True)
            else:
                typer.echo(f"unknown command {line.split()[0]!r}. {interactive_help(model)}", err=True)
            continue
        try:
            turn, literal = build_turn(model, line, pending)
            stream = model.stream([*history, turn], media=literal, **gen)
            answer = _echo_stream(stream)
            report_outputs(stream.result, output_dir or Path.cwd())
        except (XmmError, OSError) as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            if pending:
                names = ", ".join(f"{m} {p}" for m, p in pending)
                typer.echo(f"(dropped the attachments of that message: {names}; attach them again if needed)", err=True)
            pending = []
            continue
        pending = []
        history += [turn, {"role": "assistant", "content": answer}]


def register(app: typer.Typer) -> None:
    @app.command("chat", cls=MediaCommand)
    def chat(
        target: str = typer.Argument(..., metavar="CHECKPOINT_OR_CONFIG", help="Checkpoint folder, Hub repo id or model config YAML."),
        prompt: str | None = typer.Argument(None, help="Answer this once; omit for an interactive chat."),
        media: list[str] = typer.Option([], "--media", help="MODALITY=PATH: a file of any installed modality "
                                        "(repeatable)."),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
        sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
        temperature: float = typer.Option(0.7, "--temperature", min=0.0),
        top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0),
        seed: int | None = typer.Option(None, "--seed"),
        revision: str | None = typer.Option(None, "--revision", help="Hub revision of a checkpoint repo."),
        output_dir: Path | None = typer.Option(None, "--output-dir", help="Where produced images/audio/video are saved "
                                               "(default: the current directory)."),
    ) -> None:
        """Chat with a multimodal model: answer PROMPT once (streamed), or start an interactive chat."""
        from xmm.errors import ConfigError

        items: list[tuple[str, str]] = []
        for spec in media:
            name, sep, p = spec.partition("=")
            if not sep or not name or not p:
                raise ConfigError(f"expected MODALITY=PATH, got {spec[:200]!r}", field="--media")
            items.append((name, p))
        if prompt is not None:
            check_text(prompt)
        # check files before loading any model (a clear error, not minutes later)
        for name, p in items:
            check_media_file(name, p)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bars between the user and the answer
        model = load_model(target, revision=revision)
        unknown = sorted({n for n, _ in items} - set(model.specs))
        if unknown:
            raise ConfigError(f"the model has no modality {unknown}; it has {sorted(model.specs) or 'none'}", field="media")
        gen = _gen_kwargs(max_new_tokens, sample, temperature, top_p, seed)
        out_dir = output_dir or Path.cwd()
        if prompt is None:
            interactive(model, items, gen, output_dir=out_dir)
            return
        turn, literal = build_turn(model, prompt, items)
        stream = model.stream([turn], media=literal, **gen)
        _echo_stream(stream)
        report_outputs(stream.result, out_dir)
