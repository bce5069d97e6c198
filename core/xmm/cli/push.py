"""``xmm push CHECKPOINT REPO_ID``: upload a trained-only checkpoint with a generated model card to the Hub."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("push")
    def push(
        checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="Run folder, its model/, a training checkpoint "
                                         "or a save_pretrained folder."),
        repo_id: str = typer.Argument(..., help="Hub repo id, e.g. 'your-name/xmm-smollm2-image'."),
        private: bool = typer.Option(False, "--private", help="Create the repo private (no effect on an existing repo)."),
        revision: str = typer.Option(None, "--revision", help="Branch to commit to (created from main when missing)."),
        create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing."),
        message: str = typer.Option(None, "--message", "-m", help="Commit message."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Stage, audit and list the files; upload nothing."),
        out: Path = typer.Option(None, "--out", help="Keep the staged folder here (must be empty or missing)."),
    ) -> None:
        """Upload CHECKPOINT (bridges, LoRA, new token rows, manifest; never frozen weights) plus a model card.

        The token comes from HF_TOKEN or `hf auth login`; it is never printed or written.
        """
        from xmm import hub
        from xmm.resolver import resolve_local_checkpoint

        hub.check_target(repo_id, revision=revision, create_pr=create_pr)  # before any work
        # the same meaning of CHECKPOINT as chat/eval/serve: run folder, model/, stage checkpoint, checkpoints/
        resolved = resolve_local_checkpoint(checkpoint, purpose="xmm push")
        for warning in resolved.warnings:
            typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
        with tempfile.TemporaryDirectory(prefix="xmm-push-") as tmp:
            staging = out if out is not None else Path(tmp) / "upload"
            report = hub.prepare_checkpoint(resolved.path, staging, repo_id=repo_id)
            typer.echo(f"{len(report.files)} files, {report.n_tensors} tensors, {report.total_bytes / 1e6:.2f} MB "
                       f"(audited: no frozen weights) staged in {staging}")
            for name in report.files:
                typer.echo(f"  {name}")
            if dry_run:
                typer.echo(f"dry run: nothing uploaded to {repo_id}")
                return
            url = hub.upload_folder(staging, repo_id, private=private or None, revision=revision,
                                    commit_message=message, create_pr=create_pr)
        typer.echo(f"pushed to {url}")
        typer.echo(f'load with: MultimodalLM.from_pretrained("{repo_id}")')
