"""Helpers shared by the Hub tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

TOKEN = "hf_xmmTestTokenNeverWrittenAnywhere0123456789"
PLAN = "stages:\n  - name: align\n    trainable: [bridge:smell]\n    objectives: [lm]\n    steps: 100\n"
EVAL = {"metric": "exact", "score": 0.875, "n": 64}


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def build_model(llm_dir: Path, *, lora: bool = True) -> Any:
    """A model over the tiny LLM with the `smell` modality (+ LoRA), with non-zero "trained" weights."""
    from xmm import MultimodalLM
    from xmm.llm import LoadedLLM, load_llm

    loaded = load_llm(str(llm_dir))
    llm = LoadedLLM(loaded.model, loaded.tokenizer, replace(loaded.info, id="tiny-org/tiny-llama", revision="abc123"))
    cfg: dict[str, Any] = {"llm": str(llm_dir), "modalities": {"smell": {}}, "autocast": "off"}
    if lora:
        cfg["lora"] = {"r": 2, "target_modules": ["q_proj", "v_proj"]}
    model = MultimodalLM.from_config(cfg, llm=llm)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stand-in for training: LoRA B starts at zero, which would hide mistakes
        for p in [*model.bridges.parameters(), *model.lora_parameters().values()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def populate_cache(cache: Path, repo_id: str, folder: Path, *, ref: str = "main") -> str:
    """Put ``folder``'s files into ``cache`` the way ``snapshot_download`` leaves them; returns the commit hash.

    ``models--owner--name/blobs/<id>`` holds each file once (LFS files under their sha256, others under their git
    blob sha1), ``snapshots/<commit>/<path>`` are relative symlinks to the blobs, ``refs/<ref>`` names the commit.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    files = files_under(folder)
    tree = hashlib.sha1()
    blobs = {}
    for rel in files:
        data = (folder / rel).read_bytes()
        if rel.endswith(".safetensors"):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blobs[rel] = blob
        tree.update(f"{rel}\0{blob}\n".encode())
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / blob).write_bytes(data)
    commit = tree.hexdigest()
    for rel, blob in blobs.items():
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit
