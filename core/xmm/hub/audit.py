"""Checks that a folder about to be uploaded holds trained parts only, never frozen LLM or encoder weights.

Three independent checks, so that one mistake is caught by more than one of them:

- file formats: pickle-based or otherwise opaque weight files (``.bin``, ``.pt``, ``.gguf``, ...) cannot be inspected
  and are refused; every ``.safetensors`` file must parse;
- tensor names: names that only a base model has (``embed_tokens.weight``, ``lm_head.weight``, peft's
  ``base_layer``...) are refused anywhere, and an adapter under ``lora/`` may hold LoRA tensors only (peft's
  ``modules_to_save`` would otherwise copy whole frozen modules);
- tensor values: with the live frozen tensors at hand (``MultimodalLM.push_to_hub``), any uploaded tensor equal to
  one of them is refused; without them (``xmm push``), a tensor shaped like the LLM's embedding matrix is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from xmm.errors import CheckpointError

# formats whose content cannot be read without executing it (pickle) or without a model-specific parser
OPAQUE_WEIGHT_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".gguf", ".ggml", ".h5", ".msgpack", ".onnx", ".npz", ".joblib"}
)
# tensor names that only a full (base) model has
_FROZEN_NAME = re.compile(
    r"(^|\.)(embed_tokens|lm_head|wte|wpe|word_embeddings|embed_in|embed_out)"
    r"(\.base|\.base_layer|\.original_module|\.modules_to_save\.default)?\.weight$|(^|\.)base_layer\."
)
_LORA_KEY = re.compile(r"(^|\.)lora_")
# tiny tensors are skipped: they hold nothing worth protecting and would only make the value check slower
_MIN_COMPARED_NUMEL = 64


@dataclass(frozen=True)
class AuditReport:
    """What an audited folder holds: its files (relative POSIX paths), tensor count and total bytes."""

    files: tuple[str, ...]
    n_tensors: int
    total_bytes: int


def list_files(folder: str | os.PathLike[str]) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder``, sorted; refuses links, which could point anywhere."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise CheckpointError(f"{path}: refusing to upload a symbolic link; copy the file instead")
        if path.is_file():
            out.append(rel)
    return out


def audit_folder(
    folder: str | os.PathLike[str],
    *,
    frozen: Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | None = None,
    embedding_shape: tuple[int, int] | None = None,
) -> AuditReport:
    """Refuse (``CheckpointError``) a folder that holds frozen weights; see the module docstring for the checks.

    ``frozen``: the frozen tensors of the live model (LLM and frozen encoders), compared by value.
    ``embedding_shape``: the LLM's input embedding shape ``(vocab, hidden)``, refused by shape when ``frozen`` is
    not given.
    """
    from safetensors import safe_open

    folder = Path(folder)
    files = list_files(folder)
    by_shape = _index_by_shape(frozen)
    n_tensors = 0
    total = 0
    for rel in files:
        path = folder / rel
        total += path.stat().st_size
        suffix = path.suffix.lower()
        if suffix in OPAQUE_WEIGHT_SUFFIXES:
            raise CheckpointError(
                f"{path}: '{suffix}' weight files cannot be checked for frozen weights (and pickles run code when "
                "loaded); save trained tensors as .safetensors"
            )
        if suffix != ".safetensors":
            continue
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
        in_lora = rel.split("/", 1)[0] == "lora"
        with handle as f:
            for name in f.keys():
                n_tensors += 1
                _check_name(path, name, in_lora=in_lora)
                shape = tuple(f.get_slice(name).get_shape())
                if by_shape:
                    _check_value(path, name, shape, f, by_shape)
                elif embedding_shape is not None and len(shape) == 2 and shape in {embedding_shape, embedding_shape[::-1]}:
                    raise CheckpointError(
                        f"{path}: tensor '{name}' has the shape of the LLM's embedding matrix {embedding_shape}; a "
                        "checkpoint holds only the new token rows (new_tokens.safetensors), never the base matrix"
                    )
    return AuditReport(tuple(files), n_tensors, total)


def _check_name(path: Path, name: str, *, in_lora: bool) -> None:
    if _FROZEN_NAME.search(name):
        raise CheckpointError(
            f"{path}: tensor '{name}' is named like a frozen base-model weight; a checkpoint holds trained parts only "
            "(bridges, LoRA adapters, new token rows, projectors)"
        )
    if in_lora and not _LORA_KEY.search(name):
        raise CheckpointError(
            f"{path}: tensor '{name}' in the LoRA adapter is not a LoRA weight (peft's modules_to_save copies whole "
            "frozen modules); train new tokens through xmm's new-token rows instead"
        )


def _index_by_shape(frozen: Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | None) -> dict[tuple[int, ...], list[torch.Tensor]]:
    if frozen is None:
        return {}
    tensors = frozen.values() if isinstance(frozen, Mapping) else frozen
    index: dict[tuple[int, ...], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for t in tensors:
        if not t.is_floating_point() or t.numel() < _MIN_COMPARED_NUMEL or id(t) in seen:
            continue
        seen.add(id(t))  # tied weights (embedding = LM head) are indexed once
        index.setdefault(tuple(t.shape), []).append(t)
    return index


def _check_value(path: Path, name: str, shape: tuple[int, ...], handle: object,
                 by_shape: dict[tuple[int, ...], list[torch.Tensor]]) -> None:
    candidates = by_shape.get(shape)
    if not candidates:
        return
    saved = handle.get_tensor(name)  # type: ignore[attr-defined]
    for t in candidates:
        ref = t.detach().to("cpu")
        if bool(ref.min() == ref.max()):
            continue  # a constant tensor (zeros, ones) carries nothing to protect and matches fresh initialisations
        same = torch.equal(ref, saved) if ref.dtype == saved.dtype else torch.allclose(
            saved.to(ref.dtype), ref, rtol=1e-2, atol=1e-3
        )
        if same:
            raise CheckpointError(
                f"{path}: tensor '{name}' {tuple(shape)} equals a frozen weight of the model; a checkpoint holds "
                "trained parts only"
            )
