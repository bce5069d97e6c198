"""``xmm eval CHECKPOINT MANIFEST``: generate each example's answer and score it (exact / contains / WER)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def resolve_checkpoint(path: str) -> str:
    """A model folder from a model folder, a run folder (``<run>/model``) or a training checkpoint (``<ckpt>/model``)."""
    p = Path(path)
    if (p / "xmm.json").exists():
        return str(p)
    if (p / "model" / "xmm.json").exists():
        return str(p / "model")
    return path  # a Hub repo id, or an error from from_pretrained naming it


def _plan_plugins(model_dir: str) -> list[str]:
    plan = Path(model_dir) / "plan.yaml"
    if not plan.exists():
        return []
    import yaml

    data = yaml.safe_load(plan.read_text()) or {}
    return [p for p in data.get("plugins", []) if isinstance(p, str)]


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate_cmd(
        checkpoint: str = typer.Argument(..., help="Model folder, run folder or Hub repo id."),
        manifest: Path = typer.Argument(..., help="JSONL manifest with reference answers.", exists=True, dir_okay=False),
        metric: str = typer.Option("exact", "--metric", help="exact | contains | wer"),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N examples."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
        batch_size: int = typer.Option(8, "--batch-size", min=1),
        plugin: list[str] = typer.Option([], "--plugin", help="Import and register this module as a plugin first."),
        as_json: bool = typer.Option(False, "--json", help="Print {n, score, metric} as JSON."),
    ) -> None:
        """Score a checkpoint on a manifest: prints n, score and the metric."""
        from xmm.errors import ConfigError
        from xmm.model import MultimodalLM
        from xmm.training.evaluate import evaluate
        from xmm.training.metrics import METRICS
        from xmm.training.plugins import import_plugins

        if metric not in METRICS:
            raise ConfigError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}", field="--metric")
        model_dir = resolve_checkpoint(checkpoint)
        import_plugins([*_plan_plugins(model_dir), *plugin])
        model = MultimodalLM.from_pretrained(model_dir)
        result = evaluate(model, manifest, metric=metric, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit)
        if as_json:
            typer.echo(json.dumps(result))
            return
        typer.echo(f"{result['metric']}: {result['score']:.4f} on {result['n']} examples"
                   + (f" ({result['skipped']} skipped)" if result["skipped"] else ""))
