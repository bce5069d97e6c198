"""``xmm cache build PLAN.yaml``: compute frozen-encoder features of a plan's data once, ahead of training."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    cache_app = typer.Typer(help="The on-disk feature cache of frozen encoders.", no_args_is_help=True)

    @cache_app.command("build")
    def build(
        plan: Path = typer.Argument(..., help="The plan YAML whose manifests to encode.", exists=True, dir_okay=False),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items encoded at once."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Encode every media item of every stage that uses the cache (already cached items are skipped)."""
        from xmm.training.cache_build import build_cache

        typer.echo(f"xmm cache build {plan}: loading the model...", err=True)  # a minute before the first progress line
        report = build_cache(plan, batch_size=batch_size).as_dict()
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        typer.echo(f"{report['items']} items: {report['cached']} already cached, {report['computed']} computed "
                   f"-> {report['cache_dir']}")
        if report["bad_samples"]["total"]:
            typer.echo(f"skipped {report['bad_samples']['total']} bad samples: {report['bad_samples']['by_kind']}")

    app.add_typer(cache_app, name="cache")
