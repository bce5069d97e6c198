"""Sharing on the Hugging Face Hub: push a trained-only checkpoint (or one bridge) with a model card, pull it back
through the Hugging Face cache (offline once cached).

``xmm push CHECKPOINT REPO_ID`` and ``MultimodalLM.push_to_hub`` use :func:`push_checkpoint` / :func:`push_model`;
``MultimodalLM.from_pretrained("owner/name")`` uses :func:`snapshot_checkpoint`; ``Bridge.push_to_hub`` /
``Bridge.from_pretrained`` use :func:`push_bridge` / :func:`resolve_bridge_dir`.
"""

from __future__ import annotations

from xmm.hub.audit import AuditReport, audit_folder
from xmm.hub.card import bridge_card, checkpoint_card
from xmm.hub.download import resolve_bridge_dir, snapshot, snapshot_checkpoint
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
    "resolve_bridge_dir",
    "resolve_push_source",
    "snapshot",
    "snapshot_checkpoint",
    "upload_folder",
]
