"""Checkpoints of a :class:`~xmm.model.MultimodalLM`: only what was trained, plus the ``xmm.json`` manifest.

The folder layout and the typed manifest are :mod:`xmm.persist.manifest`'s. Frozen weights (the LLM, frozen
encoders, decoders) are never written. Saving builds the folder beside the target and swaps it in, so a reader never
sees half a checkpoint; files other than ours (``plan.yaml``, ``eval.json``) already in the target are kept. Loading
reads everything through :class:`~xmm.persist.manifest.Manifest`: a malformed value is a
:class:`~xmm.errors.CheckpointError` naming the field and the file, and no path may lead out of the folder.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xmm.errors import CheckpointError, ConfigError, IncompatibleCheckpointError, ModelNotFoundError, RegistryError
from xmm.io import atomic_dir, atomic_write
from xmm.llm import LoadedLLM, as_loaded_llm, load_llm
from xmm.model.config import LoraSettings, MultimodalConfig
from xmm.model.media import media_token_count
from xmm.model.outputs import load_projectors, outputs_manifest
from xmm.persist import CONFIG_NAME, WEIGHTS_NAME, load_state_strict, validate_config
from xmm.persist import manifest as layout
from xmm.persist.manifest import (
    BRIDGES_DIR,
    ENCODER_WEIGHTS,
    ENCODERS_DIR,
    LORA_DIR,
    LORA_WEIGHTS,
    MANAGED,
    MANIFEST,
    NEW_TOKENS,
    PROJECTORS_DIR,
    Manifest,
    parse_manifest,
    read_manifest,
    resolve_inside,
)
from xmm.registry import Registry, get_registry, load_bridge

if TYPE_CHECKING:
    from xmm.model.multimodal import MultimodalLM

__all__ = ["build_manifest", "check_plugins", "embedding_fingerprint", "load_checkpoint", "read_manifest",
           "save_checkpoint"]


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


# -- saving ------------------------------------------------------------------------------------------------
def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(state, str(p), metadata=meta or {"format": "pt"}))


def _encoder_saved(enc: Any) -> bool:
    return bool(type(enc).trainable or not enc.frozen)


def build_manifest(model: MultimodalLM) -> Manifest:
    """The manifest of ``model`` as it is now (what :func:`save_checkpoint` writes)."""
    from xmm._version import __version__

    bridges: dict[str, Any] = {}
    for m, name in model.bridge_names.items():
        entry = bridges.setdefault(name, {"type": model.bridges[m].config.type, "path": f"{BRIDGES_DIR}/{name}",
                                          "modalities": []})
        entry["modalities"].append(m)
    modalities: dict[str, Any] = {}
    for m, spec in model.specs.items():
        enc = model.encoders[m]
        pinfo = model.plugin_info.get(m, {})
        saved = _encoder_saved(enc)
        modalities[m] = {
            "placeholder": spec.placeholder,
            "plugin": pinfo.get("modality"),
            "encoder": {
                "name": pinfo.get("encoder_name"), "config": pinfo.get("encoder_config", {}), "id": enc.id,
                "revision": enc.revision, "output_dim": enc.output_dim, "plugin": pinfo.get("encoder"),
                "trainable": saved, "path": f"{ENCODERS_DIR}/{m}" if saved else None,
                "num_tokens": enc.num_output_tokens(),
            },
            "bridge": model.bridge_names[m],
            "media_tokens": media_token_count(enc, model.bridges[m], m),
        }
    llm_cfg = model.llm.config
    data = {
        "xmm_version": __version__,
        "llm": {
            "name": model.config.llm, "id": model.llm_info.get("id"), "revision": model.llm_info.get("revision"),
            "embedding_fingerprint": embedding_fingerprint(model.llm), "vocab_size": model.base_vocab_size,
            "hidden_size": model.hidden_size,
            "architecture": (getattr(llm_cfg, "architectures", None) or [type(model.llm).__name__])[0],
        },
        "modalities": modalities,
        "bridges": bridges,
        "tokens": [{"text": t.text, "id": t.id, "trainable": t.trainable} for t in model.new_tokens.tokens],
        "lora": model.lora_settings.model_dump() if model.lora_settings is not None else None,
        "projectors": {n: {"type": getattr(getattr(p, "config", None), "type", type(p).__name__),
                           "path": f"{PROJECTORS_DIR}/{n}"} for n, p in model.projectors.items()},
        "decoders": outputs_manifest(model),
        "config": model.config.model_dump(mode="json"),
    }
    return parse_manifest({"format": "xmm-checkpoint", "format_version": 1, **data}, source="the model's manifest")


def save_checkpoint(model: MultimodalLM, directory: str | os.PathLike[str]) -> Path:
    """Write the trainable parts of ``model`` and its manifest to ``directory`` (replaced atomically)."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise CheckpointError(f"{target}: exists, is not empty and is not an xmm checkpoint; refusing to overwrite it")
    manifest = build_manifest(model)
    # keep what others wrote beside the checkpoint (plan.yaml, eval.json, README)
    with atomic_dir(target, keep=lambda name: name not in MANAGED) as tmp:
        for entry in manifest.bridges.values():
            model.bridges[entry.modalities[0]].save_pretrained(tmp / entry.path)
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
            proj.save_pretrained(tmp / manifest.projectors[name].path)
        for m, entry in manifest.modalities.items():
            if entry.encoder.path is not None:
                _save_tensors(tmp / entry.encoder.path / ENCODER_WEIGHTS, dict(model.encoders[m].state_dict()))
        atomic_write(tmp / MANIFEST, lambda p: Path(p).write_text(manifest.to_json()))
    return target


# -- loading -----------------------------------------------------------------------------------------------
def _install_hint(plugin: Any) -> str:
    if plugin is None or not plugin.distribution:
        return "its plugin is not installed"
    dist, version = plugin.distribution, plugin.version
    pin = f"=={version}" if version and version != "?" else ""
    return f"it comes from the plugin distribution '{dist}' version {version}; install it with: pip install '{dist}{pin}'"


def check_plugins(manifest: Manifest, reg: Registry, source: Any) -> None:
    """Every modality, encoder and bridge type the checkpoint needs must be registered."""
    for m, entry in manifest.modalities.items():
        try:
            reg.modality(m)
        except RegistryError as e:
            raise IncompatibleCheckpointError(f"{source}: the checkpoint needs modality '{m}', which is not registered; "
                                              f"{_install_hint(entry.plugin)}") from e
        if entry.encoder.name not in reg.encoders:
            raise IncompatibleCheckpointError(
                f"{source}: the checkpoint needs encoder '{entry.encoder.name}' for modality '{m}', which is not "
                f"registered; {_install_hint(entry.encoder.plugin)}")
    for name, entry in manifest.bridges.items():
        try:
            reg.bridge_class(entry.type)
        except RegistryError as e:
            raise IncompatibleCheckpointError(
                f"{source}: bridge '{name}' has type '{entry.type}', which is not registered (see `xmm plugins`)") from e


def resolve_checkpoint_dir(path_or_repo: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A checkpoint folder, or the cached snapshot of a Hub repo id (downloaded when missing and the Hub is on)."""
    from xmm import pretrained

    text = os.fspath(path_or_repo)
    try:
        return pretrained.resolve(text, revision=revision, download=True, must_contain=MANIFEST, what="xmm checkpoint")
    except ModelNotFoundError as e:
        if pretrained.looks_local(text):
            raise CheckpointError(f"{text}: no such checkpoint directory (nor a Hub repo id like 'owner/name')") from e
        raise
    except CheckpointError as e:
        raise CheckpointError(f"{e}: not an xmm checkpoint (no {MANIFEST})") from e


def _check_llm(directory: Path, manifest: Manifest, loaded: LoadedLLM) -> None:
    want, found = manifest.llm, embedding_fingerprint(loaded.model)
    if found != want.embedding_fingerprint:
        info = loaded.info
        raise IncompatibleCheckpointError(
            f"{directory}: the checkpoint was trained on LLM '{want.id}' (revision {want.revision}, embedding "
            f"fingerprint {want.embedding_fingerprint}); the LLM given is '{info.id}' (revision {info.revision}, "
            f"fingerprint {found}). Load it with the LLM it was trained on.")


def _validated(cls: Any, data: dict[str, Any], directory: Path, prefix: str) -> Any:
    try:
        return cls.load(data) if cls is MultimodalConfig else validate_config(cls, data)
    except ConfigError as e:
        field = f"{prefix}.{e.field}" if e.field else prefix
        raise CheckpointError(f"{directory / MANIFEST}: field '{field}': {e}") from e


def _restore_tokens(model: MultimodalLM, manifest: Manifest, directory: Path) -> None:
    # tokens in their saved order, so ids match the saved rows
    have = [t.text for t in model.new_tokens.tokens]
    saved = manifest.tokens
    if have != [t.text for t in saved[: len(have)]]:
        raise IncompatibleCheckpointError(f"{directory}: added tokens {[t.text for t in saved]} do not start with the "
                                          f"model's placeholders {have}")
    rest = saved[len(have):]
    i = 0
    while i < len(rest):  # consecutive runs with the same trainable flag keep the saved order
        j = i
        while j < len(rest) and rest[j].trainable == rest[i].trainable:
            j += 1
        model.add_tokens([t.text for t in rest[i:j]], trainable=rest[i].trainable)
        i = j
    for t in saved:
        tid = int(model.tokenizer.convert_tokens_to_ids(t.text))
        if tid != t.id:
            raise IncompatibleCheckpointError(f"{directory}: token {t.text!r} has id {tid} here but {t.id} in the "
                                              "checkpoint; the tokenizer differs from the one it was trained with")
    if saved:
        path = resolve_inside(directory, NEW_TOKENS, field="tokens")
        model.new_tokens.load_saved(_load(path), source=str(path))


def load_checkpoint(cls: type[MultimodalLM], path_or_repo: str | os.PathLike[str], *, llm: LoadedLLM | None = None,
                    revision: str | None = None, registry: Registry | None = None, decoders: Any = None) -> MultimodalLM:
    """Rebuild a model from a checkpoint folder or Hub repo id (see :meth:`MultimodalLM.from_pretrained`)."""
    from xmm.model.build import build_model

    directory = resolve_checkpoint_dir(path_or_repo, revision)
    manifest = read_manifest(directory)
    reg = registry or get_registry()
    check_plugins(manifest, reg, directory)
    cfg = _validated(MultimodalConfig, manifest.config, directory, "config")
    settings = _validated(LoraSettings, manifest.lora, directory, "lora") if manifest.lora is not None else None
    # every folder the manifest names, and every file read from it, must lie inside the checkpoint
    bridge_dirs = {n: _folder(directory, b.path, (CONFIG_NAME, WEIGHTS_NAME), f"bridges.{n}.path")
                   for n, b in manifest.bridges.items()}
    encoder_dirs = {m: _folder(directory, e.encoder.path, (ENCODER_WEIGHTS,), f"modalities.{m}.encoder.path")
                    for m, e in manifest.modalities.items() if e.encoder.path is not None}
    projector_dirs = {m: _folder(directory, d.projector, (CONFIG_NAME, WEIGHTS_NAME), f"decoders.{m}.projector")
                      for m, d in manifest.decoders.items() if d.projector is not None}
    if llm is None:
        loaded = load_llm(manifest.llm.name or manifest.llm.id, dtype=getattr(torch, cfg.dtype), download=False)
    else:
        loaded = as_loaded_llm(llm)
    _check_llm(directory, manifest, loaded)
    # build without LoRA and extra signal tokens: both are restored below in their saved form
    model = build_model(cls, cfg.model_copy(update={"lora": None, "signal_tokens": []}), llm=loaded, registry=reg,
                        decoders=decoders)
    for m, entry in manifest.modalities.items():
        enc, e = model.encoders[m], entry.encoder
        if (enc.id, str(enc.revision)) != (e.id, e.revision):
            raise IncompatibleCheckpointError(
                f"{directory}: modality '{m}' was trained with encoder {e.id} revision {e.revision}, but the installed "
                f"plugin gives {enc.id} revision {enc.revision}; {_install_hint(e.plugin)}")
        if m in encoder_dirs:
            wpath = encoder_dirs[m] / ENCODER_WEIGHTS
            load_state_strict(enc, _load(wpath), source=wpath)
    _restore_tokens(model, manifest, directory)
    for name, entry in manifest.bridges.items():  # from their saved configs, strictly
        bridge = load_bridge(bridge_dirs[name], registry=reg, download=False).to(model.device)
        for m in entry.modalities:
            model.bridges[m] = bridge
            model.bridge_names[m] = name
    if settings is not None:
        model.add_lora(settings)
        wpath = _folder(directory, LORA_DIR, (LORA_WEIGHTS,), "lora") / LORA_WEIGHTS
        model.load_lora_state_dict(_load(wpath), source=str(wpath))
    # from_config rebuilt the decoders, projectors and signal tokens from cfg.outputs; load the projectors
    load_projectors(model, directory, projector_dirs)
    model.config = cfg
    model.checkpoint_dir = directory
    return model.eval()  # modules loaded above start in train mode (dropout on)


def _folder(directory: Path, relative: str, files: tuple[str, ...], field: str) -> Path:
    """``directory / relative`` and the ``files`` read from it, each checked to stay inside the checkpoint."""
    for name in files:
        resolve_inside(directory, f"{relative}/{name}", field=field)
    return resolve_inside(directory, relative, field=field)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing from the checkpoint") from e
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: cannot read: {e}") from e


# layout names that lived here before xmm.persist.manifest; importable from here for one release
_MOVED = {"MANIFEST", "FORMAT", "FORMAT_VERSION", "NEW_TOKENS", "LORA_DIR", "LORA_WEIGHTS", "LORA_CONFIG",
          "ENCODER_WEIGHTS", "MANAGED"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"xmm.model.checkpoint.{name} moved to xmm.persist.manifest", DeprecationWarning, stacklevel=2)
        return getattr(layout, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
