"""Sharing on the Hugging Face Hub: push a trained-only checkpoint (or one bridge) with a model card, pull it back
through the Hugging Face cache (offline once cached). Pushing lives here alone.

``xmm push CHECKPOINT REPO_ID`` uses :func:`push_checkpoint`; a live model is pushed with :func:`push_model` (its
frozen tensors are compared with the upload by value), one bridge with :func:`push_bridge`. Loading by repo id goes
through :mod:`xmm.pretrained` (``MultimodalLM.from_pretrained("owner/name")``, ``xmm.registry.load_bridge``);
:func:`snapshot` / :func:`snapshot_checkpoint` fetch a repo into the cache explicitly.
"""

from __future__ import annotations

from xmm.hub.audit import AuditReport, audit_folder
from xmm.hub.card import bridge_card, checkpoint_card
from xmm.hub.download import snapshot, snapshot_checkpoint
from xmm.hub.upload import (
    PushSource,
    check_target,
    frozen_tensors,
    prepare_bridge,
    prepare_checkpoint,
    push_bridge,
    push_checkpoint,
    push_model,
    resolve_push_source,
    upload_folder,
)

__all__ = [
    "AuditReport",
    "PushSource",
    "audit_folder",
    "bridge_card",
    "check_target",
    "checkpoint_card",
    "frozen_tensors",
    "prepare_bridge",
    "prepare_checkpoint",
    "push_bridge",
    "push_checkpoint",
    "push_model",
    "resolve_push_source",
    "snapshot",
    "snapshot_checkpoint",
    "upload_folder",
]
