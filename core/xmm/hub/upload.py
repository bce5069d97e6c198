"""Pushing checkpoints and bridges: stage the folder to upload, audit it, write the card, call ``HfApi``.

The staged folder is exactly what lands in the repo: the checkpoint's own files (manifest, bridges, LoRA adapter,
new token rows, projectors, trainable encoders, ``plan.yaml``, ``eval.json``) plus a generated ``README.md``. The
trainer's resume state (optimiser, scheduler, RNG) is never staged, and :func:`~xmm.hub.audit.audit_folder` refuses
the upload if anything resembling frozen weights got in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xmm.errors import CheckpointError, ConfigError
from xmm.hub._hf import REPO_TYPE, check_repo_id, hub_offline, make_api, translate_upload_error
from xmm.hub.audit import AuditReport, audit_folder
from xmm.hub.card import bridge_card, checkpoint_card
from xmm.hub.download import MANIFEST_NAME
from xmm.io import atomic_write_text
from xmm.persist import CONFIG_NAME
from xmm.persist.manifest import read_manifest

if TYPE_CHECKING:
    from xmm.bridges.base import Bridge

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
# written by the trainer next to a checkpoint's model/ folder or in the run folder; shown on the model card
EXTRA_FILES = ("plan.yaml", "eval.json")


@dataclass
class PushSource:
    """What to upload: the checkpoint folder (with ``xmm.json``) and extra files found beside it."""

    model_dir: Path
    extras: dict[str, Path] = field(default_factory=dict)


def resolve_push_source(path: str | os.PathLike[str]) -> PushSource:
    """Find the checkpoint to upload under ``path``: a checkpoint folder (``xmm.json``), a training checkpoint
    (``.../checkpoints/stage-1-align`` with ``model/``) or a run folder (its final ``model/``, else the checkpoint
    ``checkpoints/latest`` names). The trainer's optimiser/scheduler/RNG files are never part of the result."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    for folder in (path, _latest(path)):
        for model_dir in (folder, folder / "model") if folder is not None else ():
            if (model_dir / MANIFEST_NAME).is_file():
                return PushSource(model_dir, _extras(model_dir))
    raise CheckpointError(
        f"{path}: not an xmm checkpoint (no {MANIFEST_NAME}, model/{MANIFEST_NAME} or checkpoints/latest); pass the "
        "folder MultimodalLM.save_pretrained wrote, a training checkpoint or a run folder"
    )


def _latest(run: Path) -> Path | None:
    """The checkpoint ``run/checkpoints/latest`` names (a one-line file), if any."""
    latest = run / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    folder = run / "checkpoints" / latest.read_text().strip()
    return folder if folder.is_dir() else None


def _extras(model_dir: Path) -> dict[str, Path]:
    """``plan.yaml`` / ``eval.json`` nearest to the checkpoint: in it, in its training checkpoint, in the run folder,
    or (for a run's final model) in the run's latest checkpoint, which holds the last stage's evaluation."""
    places = [model_dir, model_dir.parent]
    if model_dir.parent.parent.name == "checkpoints":
        places.append(model_dir.parent.parent.parent)
    latest = _latest(model_dir.parent)
    if latest is not None:
        places.append(latest / "model")
    extras = {}
    for name in EXTRA_FILES:
        found = next((where / name for where in places if (where / name).is_file()), None)
        if found is not None:
            extras[name] = found
    return extras


def _ignored(rel: Path) -> bool:
    # hidden files (temp files of interrupted saves, editor files), caches and our own temp suffixes
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or rel.suffix == ".tmp"


def _copy_checkpoint(src: PushSource, staging: Path) -> None:
    if staging.exists() and any(staging.iterdir()):
        raise CheckpointError(f"{staging}: the staging folder must be empty")
    staging.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.model_dir.rglob("*")):
        rel = file.relative_to(src.model_dir)
        if _ignored(rel) or not file.is_file() or rel.as_posix() == CARD_NAME:
            continue  # the card is generated
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, staging / rel)  # copies content: a symlink in the checkpoint becomes a plain file
    for name, path in src.extras.items():
        if not (staging / name).exists():
            shutil.copyfile(path, staging / name)


def _embedding_shape(manifest: Mapping[str, Any]) -> tuple[int, int] | None:
    llm = manifest.get("llm", {})
    vocab, hidden = llm.get("vocab_size"), llm.get("hidden_size")
    return (int(vocab), int(hidden)) if isinstance(vocab, int) and isinstance(hidden, int) else None


def frozen_tensors(model: Any) -> list[torch.Tensor]:
    """The tensors of ``model`` that must never be uploaded: LLM base weights, frozen encoders, decoders."""
    trained = {id(t) for t in model.new_tokens.parameters()} | {id(t) for t in model.new_tokens.buffers()}
    trained |= {id(p) for p in model.lora_parameters().values()}
    out = [p for p in model.llm.parameters() if id(p) not in trained]
    out += [b for b in model.llm.buffers() if id(b) not in trained]
    for enc in model.encoders.values():
        if not (type(enc).trainable or not enc.frozen):  # frozen encoders are never saved
            out += list(enc.state_dict().values())
    for dec in getattr(model, "decoders", {}).values():
        out += list(dec.state_dict().values())
    return out


def check_target(repo_id: str, *, revision: str | None = None, create_pr: bool = False) -> None:
    """Refuse a bad repo id, or a branch together with a pull request, before any work is done."""
    check_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ConfigError("a pull request always targets the main branch; pass either revision or create_pr",
                          field="revision")


@contextmanager
def _staging_dir(keep: str | os.PathLike[str] | None) -> Iterator[Path]:
    if keep is not None:
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="xmm-push-") as tmp:
        yield Path(tmp) / "upload"


def upload_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    api: Any = None,
) -> str:
    """Create the repo (and branch ``revision``) if needed and upload ``folder`` as one commit; returns its url."""
    if hub_offline():
        raise CheckpointError(f"cannot upload to '{repo_id}': HF_HUB_OFFLINE is set; unset it to push")
    check_target(repo_id, revision=revision, create_pr=create_pr)
    api = api or make_api(token)
    try:
        api.create_repo(repo_id=repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            api.create_branch(repo_id=repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=REPO_TYPE,
            revision=revision,
            commit_message=commit_message or "Upload xmm checkpoint",
            create_pr=create_pr,
        )
    except CheckpointError:
        raise
    except Exception as e:  # HTTP, auth and offline errors from huggingface_hub
        raise translate_upload_error(e, repo_id) from e
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
    log.info("pushed %s to %s", folder, url)
    return str(url)


def prepare_checkpoint(checkpoint: str | os.PathLike[str] | PushSource, staging: str | os.PathLike[str], *,
                       repo_id: str | None = None, model: Any = None) -> AuditReport:
    """Copy the checkpoint into the empty folder ``staging``, audit it and write its model card (no network).

    ``checkpoint``: see :func:`resolve_push_source`. ``model``: the live :class:`~xmm.model.MultimodalLM`, when
    there is one, lets the audit compare every staged tensor with the frozen ones by value; without it, names and
    the LLM embedding shape from the manifest are checked.
    """
    src = checkpoint if isinstance(checkpoint, PushSource) else resolve_push_source(checkpoint)
    staging = Path(staging)
    _copy_checkpoint(src, staging)
    # validated (a malformed manifest is refused, naming the field), then read as the card reads it: only what the
    # file says, so a field older manifests lack stays absent instead of taking a default
    manifest = read_manifest(staging).model_dump(mode="json", exclude_unset=True)
    frozen = frozen_tensors(model) if model is not None else None
    report = audit_folder(staging, frozen=frozen, embedding_shape=_embedding_shape(manifest))
    return _with_card(report, staging, checkpoint_card(staging, manifest, repo_id=repo_id))


def _with_card(report: AuditReport, staging: Path, card: str) -> AuditReport:
    atomic_write_text(staging / CARD_NAME, card)
    files = tuple(sorted({*report.files, CARD_NAME}))
    return AuditReport(files, report.n_tensors, report.total_bytes + (staging / CARD_NAME).stat().st_size)


def push_checkpoint(
    checkpoint: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    model: Any = None,
    staging_dir: str | os.PathLike[str] | None = None,
    api: Any = None,
) -> str:
    """Upload the trained-only checkpoint at ``checkpoint`` with a generated model card to ``repo_id``; returns the
    commit url.

    ``private`` applies when the repo is created; ``revision`` names a branch (created from main when missing);
    ``create_pr`` opens a pull request instead. ``model``: see :func:`prepare_checkpoint`. ``staging_dir``: keep the
    staged folder there (it must be empty). The token (argument, ``HF_TOKEN`` or the stored login) goes to
    ``huggingface_hub`` only.
    """
    check_target(repo_id, revision=revision, create_pr=create_pr)
    with _staging_dir(staging_dir) as staging:
        prepare_checkpoint(checkpoint, staging, repo_id=repo_id, model=model)
        return upload_folder(staging, repo_id, private=private, revision=revision, token=token,
                             commit_message=commit_message, create_pr=create_pr, api=api)


def push_model(model: Any, repo_id: str, **kwargs: Any) -> str:
    """``model.save_pretrained`` into a temporary folder, then :func:`push_checkpoint` with the by-value audit."""
    with tempfile.TemporaryDirectory(prefix="xmm-save-") as tmp:
        folder = Path(tmp) / "checkpoint"
        model.save_pretrained(folder)
        return push_checkpoint(folder, repo_id, model=model, **kwargs)


def prepare_bridge(bridge: Bridge, staging: str | os.PathLike[str], *, repo_id: str | None = None) -> AuditReport:
    """Save ``bridge`` into the empty folder ``staging``, audit it and write its card (no network)."""
    staging = Path(staging)
    if staging.exists() and any(staging.iterdir()):
        raise CheckpointError(f"{staging}: the staging folder must be empty")
    bridge.save_pretrained(staging)
    report = audit_folder(staging)
    config = json.loads((staging / CONFIG_NAME).read_text())
    card = bridge_card(staging, config, repo_id=repo_id, num_tokens=bridge.num_output_tokens())
    return _with_card(report, staging, card)


def push_bridge(
    bridge: Bridge,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    staging_dir: str | os.PathLike[str] | None = None,
    api: Any = None,
) -> str:
    """Upload one bridge (``config.json`` + ``model.safetensors`` + card) to ``repo_id``; returns the commit url."""
    check_target(repo_id, revision=revision, create_pr=create_pr)
    with _staging_dir(staging_dir) as staging:
        prepare_bridge(bridge, staging, repo_id=repo_id)
        message = commit_message or f"Upload xmm {bridge.config.type} bridge"
        return upload_folder(staging, repo_id, private=private, revision=revision, token=token,
                             commit_message=message, create_pr=create_pr, api=api)
