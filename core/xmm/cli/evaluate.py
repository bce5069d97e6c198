"""``xmm eval CHECKPOINT MANIFEST``: generate each example's answer and score it (exact / contains / WER)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import typer


def __getattr__(name: str) -> Any:
    # the old checkpoint helper (plugin scripts import it): one release, then only xmm.resolver
    if name == "resolve_checkpoint":
        warnings.warn("xmm.cli.evaluate.resolve_checkpoint is deprecated: use xmm.resolver.resolve_checkpoint(target)"
                      ".location", DeprecationWarning, stacklevel=2)
        return _resolve_location
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resolve_location(path: str) -> str:
    from xmm.resolver import resolve_checkpoint

    return resolve_checkpoint(path).location


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate_cmd(
        checkpoint: str = typer.Argument(..., help="Model folder, run folder, training checkpoint, Hub repo id, or a "
                                         "model config (untrained bridges: a baseline)."),
        manifest: Path = typer.Argument(..., help="JSONL manifest with reference answers.", exists=True, dir_okay=False),
        metric: str = typer.Option("exact", "--metric", help="exact | contains | wer"),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N examples."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
        batch_size: int = typer.Option(8, "--batch-size", min=1),
        plugin: list[str] = typer.Option([], "--plugin", help="Import and register this module as a plugin first "
                                         "(a run's plan names its own)."),
        revision: str | None = typer.Option(None, "--revision", help="Hub revision of a checkpoint repo."),
        predictions: Path | None = typer.Option(None, "--predictions", dir_okay=False, help="Write one JSON line per "
                                                "example: source, task, input, expected, answer, correct. With "
                                                "--metric exact, also a confusion PNG beside it (PREDICTIONS "
                                                "without .jsonl + .confusion.png)."),
        confusion: Path | None = typer.Option(None, "--confusion", dir_okay=False, help="Where to write the confusion "
                                              "PNG (exact metric; needs the 'plot' extra)."),
        probe: int = typer.Option(10, "--probe", min=0, help="Off-task probe: ask 'Describe this <media> in one "
                                  "sentence.' and 'What is the capital of France?' about the media of N examples "
                                  "and count answers that are one of the manifest's answers (0: skip; exact and "
                                  "contains metrics)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result (score, breakdown, probe) as JSON."),
    ) -> None:
        """Score a checkpoint on a manifest: the score, the breakdown by task and by expected answer, how often an
        off-task prompt gets a training answer; optionally every prediction and a confusion PNG."""
        from xmm.errors import ConfigError
        from xmm.resolver import resolve_checkpoint
        from xmm.training.eval_report import format_report, plot_confusion, write_predictions
        from xmm.training.evaluate import evaluate, probe_off_task
        from xmm.training.metrics import METRICS
        from xmm.training.plugins import import_plugins

        if metric not in METRICS:
            raise ConfigError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}", field="--metric")
        if confusion is not None and metric != "exact":
            raise ConfigError("a confusion matrix needs --metric exact", field="--confusion")
        resolved = resolve_checkpoint(checkpoint, revision=revision)  # a bad target fails before any model loads
        import_plugins(plugin)
        model = resolved.load(on_warning=lambda m: typer.secho(f"warning: {m}", fg=typer.colors.YELLOW, err=True))
        result = evaluate(model, manifest, metric=metric, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          limit=limit, return_predictions=True, progress=True)
        records = result.pop("predictions")
        if probe and metric != "wer":
            result["probe"] = probe_off_task(model, manifest, examples=probe, batch_size=batch_size, progress=True)
        files: dict[str, str] = {}
        if predictions is not None:
            files["predictions"] = str(write_predictions(records, predictions))
        if metric == "exact" and (confusion is not None or predictions is not None):
            target = confusion or predictions.with_name(predictions.name.removesuffix(".jsonl") + ".confusion.png")
            png = plot_confusion(records, target, title=f"xmm eval: {checkpoint} on {manifest.name}")
            if png is not None:
                files["confusion"] = str(png)
        if files:
            result["files"] = files
        if as_json:
            typer.echo(json.dumps(result))
            return
        typer.echo(format_report(result))
        for kind, path in files.items():
            typer.echo(f"{kind}: {path}")
