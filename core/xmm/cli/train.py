"""``xmm train PLAN.yaml [--resume]``: run a staged training plan (``torchrun --nproc_per_node N xmm train ...``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        plan: Path = typer.Argument(..., help="The plan YAML (model, stages, data...).", exists=True, dir_okay=False),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
        output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Override the plan's output_dir."),
        as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
        threads: str | None = typer.Option(None, "--threads", help="Compute threads: a number or 'auto' (the cores "
                                           "free now); default: the plan's 'threads'."),
    ) -> None:
        """Train the bridges (and LoRA) of a model stage by stage, as the plan says."""
        from xmm.training.loop import train as run

        # loading the LLM and encoders can take a minute before the first progress line
        typer.echo(f"xmm train {plan}: loading the model{' and resuming' if resume else ''}...", err=True)
        result = run(plan, resume=resume, output_dir=output_dir, threads=_threads(threads))
        # the process group is gone once train() returns: torchrun's RANK says which process prints
        if int(os.environ.get("RANK", "0")) != 0:
            return
        summary = {"model_dir": str(result.model_dir), "global_step": result.global_step, "stages": result.stages,
                   "bad_samples": result.bad_samples}
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
            return
        for st in result.stages:
            last = st.get("last", {})
            loss = f"{last['loss']:.4f}" if "loss" in last else "-"
            if st.get("logged") is False:  # finished by an earlier attempt that stopped before logging its end
                typer.echo(f"stage {st['stage']}: finished before a restart")
                continue
            line = f"stage {st['stage']}: {st['steps']} steps, final loss {loss}"
            if st.get("eval"):
                line += f", eval {st['eval']['metric']} = {st['eval']['score']:.4f} (n={st['eval']['n']})"
            typer.echo(line)
        skipped = result.bad_samples.get("total", 0)
        if skipped:
            typer.echo(f"skipped {skipped} bad samples: {result.bad_samples.get('by_kind')}")
        typer.echo(f"model: {result.model_dir}")



def _threads(value: str | None) -> int | str | None:
    from xmm.threads import parse_threads

    try:
        return None if value is None else parse_threads(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--threads") from None
