"""``xmm train PLAN.yaml [--resume]``: run a staged training plan (``torchrun --nproc_per_node N xmm train ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        plan: Path = typer.Argument(..., help="The plan YAML (model, stages, data...).", exists=True, dir_okay=False),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
        output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Override the plan's output_dir."),
        as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    ) -> None:
        """Train the bridges (and LoRA) of a model stage by stage, as the plan says."""
        from xmm.training.loop import train as run

        result = run(plan, resume=resume, output_dir=output_dir)
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank != 0:
            return
        summary = {"model_dir": str(result.model_dir), "global_step": result.global_step, "stages": result.stages,
                   "bad_samples": result.bad_samples}
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
            return
        for st in result.stages:
            last = st.get("last", {})
            loss = f"{last['loss']:.4f}" if "loss" in last else "-"
            line = f"stage {st['stage']}: {st['steps']} steps, final loss {loss}"
            if st.get("eval"):
                line += f", eval {st['eval']['metric']} = {st['eval']['score']:.4f} (n={st['eval']['n']})"
            typer.echo(line)
        skipped = result.bad_samples.get("total", 0)
        if skipped:
            typer.echo(f"skipped {skipped} bad samples: {result.bad_samples.get('by_kind')}")
        typer.echo(f"model: {result.model_dir}")
