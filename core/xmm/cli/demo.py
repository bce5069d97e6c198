"""``xmm demo``: teach the real SmolLM2 new senses on this machine and show the held-out results."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        quick: bool = typer.Option(False, "--quick", help="Small smoke-test run (about 3 minutes)."),
        all_: bool = typer.Option(False, "--all", help="Every installed demo task, not only the default ones (longer)."),
        as_json: bool = typer.Option(False, "--json", help="Print the results table as JSON on stdout."),
        output: Path = typer.Option(Path("xmm-demo"), "--output", "-o", help="Folder for data, runs and reports."),
        seed: int = typer.Option(0, help="Seed for data and training (held-out data uses its own seed)."),
        task: list[str] = typer.Option([], "--task", help="Run this demo task (repeatable; default: the mode's tasks; "
                                       "`xmm plugins` lists the installed ones)."),
        threads: str = typer.Option("auto", "--threads", help="Compute threads: a number or 'auto' (the cores free "
                                    "when the demo starts)."),
    ) -> None:
        """Generate data, train bridges in stages on the real SmolLM2, evaluate before/after, show examples."""
        from xmm.demo.runner import format_examples, format_table, run_demo

        if quick and all_:
            raise typer.BadParameter("choose one of --quick and --all")
        mode = "quick" if quick else "all" if all_ else "default"
        from xmm.threads import parse_threads, use_threads

        try:
            use_threads(parse_threads(threads))
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--threads") from None
        res = run_demo(mode, output, seed=seed, names=task or None)
        if as_json:
            typer.echo(json.dumps(res.as_dict(), indent=2))
            return
        typer.echo("\n" + format_table(res))
        typer.echo("\nHeld-out examples answered in chat form:")
        typer.echo(format_examples(res))
        typer.echo("\nFiles: " + ", ".join(f"{k}={v}" for k, v in res.files.items()))
