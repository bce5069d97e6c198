"""``xmm chat CHECKPOINT_OR_CONFIG [--image P ...] ["PROMPT"]``: answer once, or chat interactively (streamed)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

log = logging.getLogger(__name__)

MEDIA_OPTIONS = ("image", "video", "audio", "speech", "device")
HELP_INTERACTIVE = "Interactive chat: type a message; /image PATH (or any /MODALITY PATH) attaches media to the next " \
                   "message, /reset clears the history, /exit quits."


def load_model(target: str, *, revision: str | None = None) -> Any:
    """A checkpoint folder (has xmm.json), a Hub repo id, or a MultimodalConfig YAML (untrained bridges: warns)."""
    from xmm.errors import ConfigError
    from xmm.model import MultimodalLM
    from xmm.model.checkpoint import MANIFEST

    path = Path(target)
    if path.is_dir():
        return MultimodalLM.from_pretrained(path)
    if path.suffix.lower() in {".yaml", ".yml", ".json"}:
        if not path.is_file():
            raise ConfigError("config file not found", source=path)
        typer.secho(f"warning: {path} is a model config, not a checkpoint: its bridges are untrained, so answers about "
                    "media are meaningless", fg=typer.colors.YELLOW, err=True)
        return MultimodalLM.from_config(path)
    if path.exists():
        raise ConfigError(f"expected a checkpoint folder (with {MANIFEST}) or a config YAML", source=path)
    return MultimodalLM.from_pretrained(target, revision=revision)  # a Hub repo id


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
    return input()


def interactive(model: Any, media: list[tuple[str, str]], gen: dict[str, Any], *, input_fn: Any = _read_line,
                output_dir: Path | None = None) -> None:
    """The interactive loop: streams answers, keeps the history, ``/reset``, ``/exit``, ``/MODALITY PATH``."""
    from xmm.errors import XmmError

    typer.echo(HELP_INTERACTIVE, err=True)
    history: list[dict[str, Any]] = []
    pending = list(media)
    while True:
        try:
            line = input_fn().strip()
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return
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
                pending.append((cmd, arg.strip()))
                typer.echo(f"({cmd} attached to the next message)", err=True)
            else:
                typer.echo(f"unknown command {line.split()[0]!r}. {HELP_INTERACTIVE}", err=True)
            continue
        turn, literal = build_turn(model, line, pending)
        try:
            stream = model.stream([*history, turn], media=literal, **gen)
            answer = _echo_stream(stream)
            report_outputs(stream.result, output_dir or Path.cwd())
        except XmmError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            continue
        pending = []
        history += [turn, {"role": "assistant", "content": answer}]


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat(
        target: str = typer.Argument(..., metavar="CHECKPOINT_OR_CONFIG", help="Checkpoint folder, Hub repo id or model config YAML."),
        prompt: str | None = typer.Argument(None, help="Answer this once; omit for an interactive chat."),
        image: list[str] = typer.Option([], "--image", help="Image file (repeatable)."),
        video: list[str] = typer.Option([], "--video", help="Video file (repeatable)."),
        audio: list[str] = typer.Option([], "--audio", help="Audio file (repeatable)."),
        speech: list[str] = typer.Option([], "--speech", help="Speech recording (repeatable)."),
        device: list[str] = typer.Option([], "--device", help="Device status file (repeatable)."),
        media: list[str] = typer.Option([], "--media", help="MODALITY=PATH for any other modality (repeatable)."),
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
        for name, paths in zip(MEDIA_OPTIONS, (image, video, audio, speech, device)):
            items += [(name, p) for p in paths]
        for spec in media:
            name, sep, p = spec.partition("=")
            if not sep or not name or not p:
                raise ConfigError(f"expected MODALITY=PATH, got {spec!r}", field="--media")
            items.append((name, p))
        # check files before loading any model (a clear error, not minutes later)
        for name, p in items:
            if not Path(p).expanduser().is_file():
                from xmm.errors import MediaError

                raise MediaError("file not found", source=p, modality=name)
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
