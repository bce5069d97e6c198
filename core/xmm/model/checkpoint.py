"""Checkpoints of a :class:`~xmm.model.MultimodalLM`: only what was trained, plus an ``xmm.json`` manifest.

Layout::

    xmm.json                   manifest: LLM id/revision/embedding fingerprint, modalities with encoder and plugin
                               identity, bridges, added tokens, LoRA, projectors, decoders, the model config
    bridges/<name>/            one folder per bridge (a shared bridge once): config.json + model.safetensors
    new_tokens.safetensors     rows of added tokens (placeholders and trainable signal tokens)
    lora/                      adapter_config.json + adapter_model.safetensors (only with LoRA)
    projectors/<name>/         output projectors (only when present)
    encoders/<modality>/       trainable encoders only (e.g. device); frozen encoders are never written

Frozen weights (the LLM, frozen encoders, decoders) are never written. Saving builds the folder beside the target
and swaps it in, so a reader never sees half a checkpoint; files other than ours (``plan.yaml``, ``eval.json``)
already in the target are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xmm.errors import CheckpointError, IncompatibleCheckpointError, RegistryError
from xmm.io import atomic_write

if TYPE_CHECKING:
    from xmm.model.multimodal import MultimodalLM

log = logging.getLogger(__name__)

MANIFEST = "xmm.json"
FORMAT = "xmm-checkpoint"
FORMAT_VERSION = 1
NEW_TOKENS = "new_tokens.safetensors"
LORA_DIR = "lora"
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
ENCODER_WEIGHTS = "model.safetensors"
MANAGED = {MANIFEST, NEW_TOKENS, LORA_DIR, "bridges", "projectors", "encoders"}


def embedding_fingerprint(llm: Any) -> str:
    """sha256 of the LLM's base input-embedding matrix (shape + values rounded to bf16).

    Rounding to bf16 makes the fingerprint the same whether the LLM was loaded in fp32 or bf16.
    """
    emb = llm.get_input_embeddings()
    weight = getattr(emb, "base", emb).weight.detach()
    h = hashlib.sha256(f"{tuple(weight.shape)}".encode())
    data = weight.to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy()
    h.update(data.tobytes())
    return f"sha256:{h.hexdigest()}"


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory}: not an xmm checkpoint (no {MANIFEST})") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the manifest: {e}") from e
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xmm checkpoint manifest (format {data.get('format')!r})")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise IncompatibleCheckpointError(f"{path}: format version {data.get('format_version')} is newer than this "
                                          f"xmm supports ({FORMAT_VERSION}); upgrade xmm-core")
    return data


# -- saving ------------------------------------------------------------------------------------------------
def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(state, str(p), metadata=meta or {"format": "pt"}))


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def build_manifest(model: MultimodalLM) -> dict[str, Any]:
    from xmm import __version__
    from xmm.model.outputs import outputs_manifest

    llm_cfg = model.llm.config
    bridges: dict[str, Any] = {}
    for m, name in model.bridge_names.items():
        b = model.bridges[m]
        entry = bridges.setdefault(name, {"type": b.config.type, "path": f"bridges/{name}", "modalities": []})
        entry["modalities"].append(m)
    modalities: dict[str, Any] = {}
    for m, spec in model.specs.items():
        enc = model.encoders[m]
        pinfo = model.plugin_info.get(m, {})
        modalities[m] = {
            "placeholder": spec.placeholder,
            "plugin": pinfo.get("modality"),
            "encoder": {
                "name": pinfo.get("encoder_name"),
                "config": pinfo.get("encoder_config", {}),
                "id": enc.id,
                "revision": enc.revision,
                "output_dim": enc.output_dim,
                "plugin": pinfo.get("encoder"),
                "trainable": _encoder_saved(enc),
                "path": f"encoders/{m}" if _encoder_saved(enc) else None,
            },
            "bridge": model.bridge_names[m],
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xmm_version": __version__,
        "llm": {
            "name": model.config.llm,
            "id": model.llm_info.get("id"),
            "revision": model.llm_info.get("revision"),
            "embedding_fingerprint": embedding_fingerprint(model.llm),
            "vocab_size": model.base_vocab_size,
            "hidden_size": model.hidden_size,
            "architecture": (getattr(llm_cfg, "architectures", None) or [type(model.llm).__name__])[0],
        },
        "modalities": modalities,
        "bridges": bridges,
        "tokens": [{"text": t.text, "id": t.id, "trainable": t.trainable} for t in model.new_tokens.tokens],
        "lora": model.lora_settings.model_dump() if model.lora_settings is not None else None,
        "projectors": {n: {"type": getattr(getattr(p, "config", None), "type", type(p).__name__), "path": f"projectors/{n}"}
                       for n, p in model.projectors.items()},
        "decoders": outputs_manifest(model),
        "config": model.config.model_dump(mode="json"),
    }


def _encoder_saved(enc: Any) -> bool:
    return bool(type(enc).trainable or not enc.frozen)


def save_checkpoint(model: MultimodalLM, directory: str | os.PathLike[str]) -> Path:
    """Write the trainable parts of ``model`` and its manifest to ``directory`` (replaced atomically)."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise CheckpointError(f"{target}: exists, is not empty and is not an xmm checkpoint; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        manifest = build_manifest(model)
        for name, entry in manifest["bridges"].items():
            model.bridges[entry["modalities"][0]].save_pretrained(tmp / "bridges" / name)
        if model.new_tokens.tokens:
            _save_tensors(tmp / NEW_TOKENS, model.new_tokens.state_for_save())
        if model.lora_settings is not None:
            (tmp / LORA_DIR).mkdir()
            # peft's own adapter format (adapter_config.json + adapter_model.safetensors): peft can load it too
            _save_tensors(tmp / LORA_DIR / LORA_WEIGHTS, model.lora_state_dict())
            model.peft_config().save_pretrained(str(tmp / LORA_DIR))
        for name, proj in model.projectors.items():
            if not hasattr(proj, "save_pretrained"):
                raise CheckpointError(f"projector '{name}' ({type(proj).__name__}) has no save_pretrained()")
            proj.save_pretrained(tmp / "projectors" / name)
        for m, enc in model.encoders.items():
            if _encoder_saved(enc):
                _save_tensors(tmp / "encoders" / m / ENCODER_WEIGHTS, dict(enc.state_dict()))
        _write_json(tmp / MANIFEST, manifest)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    for entry in target.iterdir():  # keep what others wrote beside the checkpoint (plan.yaml, eval.json, README)
        if entry.name not in MANAGED and not (tmp / entry.name).exists():
            shutil.move(str(entry), str(tmp / entry.name))
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# -- loading -----------------------------------------------------------------------------------------------
def _install_hint(plugin: dict[str, Any] | None) -> str:
    if not plugin or not plugin.get("distribution"):
        return "its plugin is not installed"
    dist, version = plugin["distribution"], plugin.get("version")
    pin = f"=={version}" if version and version != "?" else ""
    return f"it comes from the plugin distribution '{dist}' version {version}; install it with: pip install '{dist}{pin}'"


def check_plugins(manifest: dict[str, Any], reg: Any, source: Any) -> None:
    """Every modality, encoder and bridge type the checkpoint needs must be registered."""
    for m, entry in manifest.get("modalities", {}).items():
        try:
            reg.modality(m)
        except RegistryError as e:
            raise IncompatibleCheckpointError(
                f"{source}: the checkpoint needs modality '{m}', which is not registered; {_install_hint(entry.get('plugin'))}"
            ) from e
        enc = entry.get("encoder", {})
        if enc.get("name") not in reg.encoders:
            raise IncompatibleCheckpointError(
                f"{source}: the checkpoint needs encoder '{enc.get('name')}' for modality '{m}', which is not registered; "
                f"{_install_hint(enc.get('plugin'))}"
            )
    for name, entry in manifest.get("bridges", {}).items():
        try:
            reg.bridge_class(entry["type"])
        except RegistryError as e:
            raise IncompatibleCheckpointError(
                f"{source}: bridge '{name}' has type '{entry['type']}', which is not registered (see `xmm plugins`)"
            ) from e


def _resolve_dir(path_or_repo: str | os.PathLike[str], revision: str | None) -> Path:
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    text = str(path_or_repo)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise CheckpointError(f"{text}: no such checkpoint directory (nor a Hub repo id like 'owner/name')")
    from xmm import hub  # not a local folder: a Hub repo id

    return Path(hub.snapshot_checkpoint(text, revision=revision))


def load_checkpoint(cls: type[MultimodalLM], path_or_repo: str | os.PathLike[str], *, llm: Any = None,
                    revision: str | None = None, registry: Any = None, decoders: Any = None) -> MultimodalLM:
    """Rebuild a model from a checkpoint folder or Hub repo id (see :meth:`MultimodalLM.from_pretrained`)."""
    from safetensors.torch import load_file

    from xmm.bridges.base import Bridge, load_state_strict
    from xmm.llm import load_llm
    from xmm.model.config import MultimodalConfig
    from xmm.registry import get_registry

    directory = _resolve_dir(path_or_repo, revision)
    manifest = read_manifest(directory)
    reg = registry or get_registry()
    check_plugins(manifest, reg, directory)
    cfg = MultimodalConfig.load(manifest["config"])
    want = manifest["llm"]
    if llm is None:
        import torch as _t

        llm = load_llm(want.get("name") or want.get("id"), dtype=getattr(_t, cfg.dtype))
    found = embedding_fingerprint(llm[0])
    if found != want["embedding_fingerprint"]:
        info = llm[2] if len(llm) > 2 else {}
        raise IncompatibleCheckpointError(
            f"{directory}: the checkpoint was trained on LLM '{want.get('id')}' (revision {want.get('revision')}, "
            f"embedding fingerprint {want['embedding_fingerprint']}); the LLM given is '{info.get('id')}' (revision "
            f"{info.get('revision')}, fingerprint {found}). Load it with the LLM it was trained on."
        )
    # build without LoRA: the adapter is injected and loaded below with the saved settings
    model = cls.from_config(cfg.model_copy(update={"lora": None, "signal_tokens": []}), llm=llm, registry=reg,
                            decoders=decoders)
    for m, entry in manifest["modalities"].items():
        enc, e = model.encoders[m], entry["encoder"]
        if (enc.id, str(enc.revision)) != (e["id"], str(e["revision"])):
            raise IncompatibleCheckpointError(
                f"{directory}: modality '{m}' was trained with encoder {e['id']} revision {e['revision']}, but the "
                f"installed plugin gives {enc.id} revision {enc.revision}; {_install_hint(e.get('plugin'))}"
            )
        if e.get("path"):
            wpath = directory / e["path"] / ENCODER_WEIGHTS
            load_state_strict(enc, _load(load_file, wpath), source=wpath)
    # tokens in their saved order, so ids match the saved rows
    have = [t.text for t in model.new_tokens.tokens]
    saved = manifest.get("tokens", [])
    if have != [t["text"] for t in saved[: len(have)]]:
        raise IncompatibleCheckpointError(f"{directory}: added tokens {[t['text'] for t in saved]} do not start with the "
                                          f"model's placeholders {have}")
    rest = saved[len(have):]
    i = 0
    while i < len(rest):  # consecutive runs with the same trainable flag keep the saved order
        j = i
        while j < len(rest) and rest[j]["trainable"] == rest[i]["trainable"]:
            j += 1
        model.add_tokens([t["text"] for t in rest[i:j]], trainable=rest[i]["trainable"])
        i = j
    for t in saved:
        tid = int(model.tokenizer.convert_tokens_to_ids(t["text"]))
        if tid != int(t["id"]):
            raise IncompatibleCheckpointError(f"{directory}: token {t['text']!r} has id {tid} here but {t['id']} in the "
                                              "checkpoint; the tokenizer differs from the one it was trained with")
    if saved:
        model.new_tokens.load_saved(_load(load_file, directory / NEW_TOKENS), source=str(directory / NEW_TOKENS))
    # bridges from their saved configs, strictly
    for name, entry in manifest["bridges"].items():
        bridge = Bridge.from_pretrained(directory / entry["path"]).to(model.device)
        for m in entry["modalities"]:
            model.bridges[m] = bridge
            model.bridge_names[m] = name
    if manifest.get("lora"):
        model.add_lora(manifest["lora"])
        wpath = directory / LORA_DIR / LORA_WEIGHTS
        model.load_lora_state_dict(_load(load_file, wpath), source=str(wpath))
    # outputs: from_config rebuilt the decoders, projectors and signal tokens from cfg.outputs; load the projectors
    from xmm.model.outputs import load_projectors

    load_projectors(model, directory)
    model.config = cfg
    model.checkpoint_dir = directory
    return model.eval()  # modules loaded above start in train mode (dropout on)


def _load(load_file: Any, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing from the checkpoint") from e
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: cannot read: {e}") from e
