"""``xmm init plan --modality M --data train.jsonl``: write a training plan from the modality plugin's recipe, sized to
this machine (:mod:`xmm.training.recipe_plan`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

LLM_ENV = "XMM_LLM"  # the LLM a new plan names when --llm is not given


def register(app: typer.Typer) -> None:
    init_app = typer.Typer(help="Start something new from what the installed plugins recommend.", no_args_is_help=True)

    @init_app.command("plan")
    def plan(
        modality: str = typer.Option(..., "--modality", "-m", help="The modality to teach (`xmm plugins` lists them)."),
        data: list[Path] = typer.Option(..., "--data", "-d", help="Training manifest (repeatable): xmm JSONL or any "
                                        "format `xmm data check` reads."),
        minutes: float | None = typer.Option(None, "--minutes", help="Time budget for training on this machine: the "
                                             "recipe's steps are scaled down to fit it (never up)."),
        output: Path = typer.Option(Path("plan.yaml"), "--output", "-o", dir_okay=False, help="Where to write the plan."),
        eval_manifest: Path | None = typer.Option(None, "--eval", dir_okay=False, help="Held-out manifest scored at "
                                                  "the end of training."),
        captions: list[Path] = typer.Option([], "--captions", help="Caption pairs (media -> description) for the "
                                            "stages whose recipe reads captions."),
        mix_general: float = typer.Option(0.0, "--mix-general", min=0.0, max=0.95, help="Share of general "
                                          "instruction examples in the lm stages (e.g. 0.2): made before training by "
                                          "the frozen LLM answering varied prompts (self-distillation), so the model "
                                          "keeps answering questions that are not about the task."),
        llm: str | None = typer.Option(None, "--llm", help=f"The LLM (a Hub id, a folder or 'smollm2'; default "
                                       f"${LLM_ENV} or smollm2)."),
        recipe: str | None = typer.Option(None, "--recipe", help="A registered recipe by name (default: the "
                                          "modality's)."),
        bridge: str | None = typer.Option(None, "--bridge", help="Another bridge type than the recipe's (its default "
                                          "options); objectives that do not apply to it are left out."),
        metric: str = typer.Option("exact", "--metric", help="Metric of the --eval manifest: exact | contains | wer."),
        measure: bool = typer.Option(True, "--measure/--no-measure", help="Time a few steps of each stage here."),
        time_steps: int = typer.Option(3, "--time-steps", min=1, help="Steps timed per stage."),
        force: bool = typer.Option(False, "--force", help="Overwrite --output."),
    ) -> None:
        """Write the plugin's recommended plan for your data, timed on this machine (it says the measured seconds per
        step and the steps it chose)."""
        from xmm.training.recipe_plan import init_plan

        init_plan(modality, data, output=output, minutes=minutes, llm=llm or os.environ.get(LLM_ENV) or "smollm2",
                  recipe_name=recipe, bridge=bridge, captions=captions, eval_manifest=eval_manifest, metric=metric,
                  mix_general=mix_general, measure=measure, time_steps=time_steps, force=force, say=typer.echo)

    app.add_typer(init_app, name="init")
