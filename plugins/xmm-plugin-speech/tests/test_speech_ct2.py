"""The CTranslate2 model.bin reader and the Whisper conversion, round-tripped through a tiny random Whisper."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from xmm.errors import CheckpointError
from xmm_plugin_speech.ct2 import parse_ct2_model, read_ct2_model, write_ct2_model
from xmm_plugin_speech.whisper_ct2 import convert_ct2_whisper


def _tiny_whisper() -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=80, vocab_size=96, max_source_positions=1500,
        max_target_positions=24, pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random LayerNorm affines and biases, so a gamma/beta or bias mix-up cannot go unnoticed
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = 127.0 / w.abs().amax(dim=1).clamp_min(1e-8)
    return torch.round(w * scale[:, None]).to(torch.int8), scale


def _to_ct2(model: torch.nn.Module, dtype: torch.dtype | str) -> dict[str, torch.Tensor]:
    """The inverse of the reader's mapping, as CTranslate2's converter lays Whisper out (fused qkv, gamma/beta)."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, torch.Tensor] = {}

    def lin(dst: str, *srcs: str, zero_k: bool = False) -> None:
        w = torch.cat([sd[f"{s}.weight"] for s in srcs])
        b = torch.cat([sd[f"{s}.bias"] if f"{s}.bias" in sd else torch.zeros(sd[f"{s}.weight"].shape[0]) for s in srcs])
        if dtype == "int8":
            q, scale = _quantise(w)
            out[f"{dst}/weight"], out[f"{dst}/weight_scale"] = q, scale
        else:
            out[f"{dst}/weight"] = w.to(dtype)
        out[f"{dst}/bias"] = b.to(torch.float32 if dtype == "int8" else dtype)

    def norm(dst: str, src: str) -> None:
        fdt = torch.float32 if dtype == "int8" else dtype
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"].to(fdt), sd[f"{src}.bias"].to(fdt)

    fdt = torch.float32 if dtype == "int8" else dtype
    out["decoder/activation"] = torch.tensor(3, dtype=torch.int8)
    out["decoder/pre_norm"] = torch.tensor(1, dtype=torch.int8)
    for side in ("encoder", "decoder"):
        out[f"{side}/num_heads"] = torch.tensor(4, dtype=torch.int16)
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"].to(fdt)
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(cfg.encoder_layers if side == "encoder" else cfg.decoder_layers):
            s, d = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            lin(f"{d}/self_attention/linear_0", f"{s}.self_attn.q_proj", f"{s}.self_attn.k_proj", f"{s}.self_attn.v_proj")
            lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
                lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
                lin(f"{d}/attention/linear_1", f"{s}.encoder_attn.k_proj", f"{s}.encoder_attn.v_proj")
                lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
    for conv in ("conv1", "conv2"):
        out[f"encoder/{conv}/weight"] = sd[f"model.encoder.{conv}.weight"].to(fdt)
        out[f"encoder/{conv}/bias"] = sd[f"model.encoder.{conv}.bias"].to(fdt)
    if dtype == "int8":
        q, scale = _quantise(sd["model.decoder.embed_tokens.weight"])
        out["decoder/embeddings/weight"], out["decoder/embeddings/weight_scale"] = q, scale
    else:
        out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"].to(dtype)
    return out


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 2e-2), ("int8", 0.15)])
def test_round_trip_through_model_bin(tmp_path: Path, dtype: torch.dtype | str, tol: float) -> None:
    from transformers import WhisperForConditionalGeneration

    ref = _tiny_whisper()
    path = write_ct2_model(tmp_path / "model.bin", "WhisperSpec", 3, _to_ct2(ref, dtype), {"decoder/projection/weight": "decoder/embeddings/weight"})
    ct2 = read_ct2_model(path)
    assert ct2.spec == "WhisperSpec" and ct2.spec_revision == 3 and ct2.binary_version == 6
    assert ct2.raw("decoder/projection/weight") is ct2.raw("decoder/embeddings/weight")
    vocab = tmp_path / "vocabulary.txt"
    vocab.write_text("\n".join(["<|endoftext|>", "<|startoftranscript|>"] + [f"t{i}" for i in range(94)]) + "\n")
    out = convert_ct2_whisper(ct2, tmp_path / "hf", vocabulary=vocab, meta={"id": "tiny"})
    got = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert got.config.encoder_layers == 2 and got.config.encoder_attention_heads == 4 and got.config.decoder_ffn_dim == 48
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        a = ref(input_features=feats, decoder_input_ids=dec).logits
        b = got(input_features=feats, decoder_input_ids=dec).logits
        ea = ref.get_encoder()(feats).last_hidden_state
        eb = got.get_encoder()(feats).last_hidden_state
    assert (ea - eb).abs().max() < tol * ea.abs().max()
    assert (a - b).abs().max() < tol * a.abs().max(), (a - b).abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1)) or dtype == "int8"
    assert (out / "preprocessor_config.json").exists() and (out / "generation_config.json").exists()


def test_reader_rejects_bad_files(tmp_path: Path) -> None:
    path = write_ct2_model(tmp_path / "m.bin", "WhisperSpec", 3, {"a/weight": torch.ones(2, 3)}, {"b": "a/weight"})
    data = bytearray(path.read_bytes())
    ok = parse_ct2_model(bytearray(data))
    assert torch.equal(ok.float("b"), torch.ones(2, 3)) and "b" in ok and "c" not in ok
    with pytest.raises(CheckpointError, match="truncated"):
        parse_ct2_model(bytearray(data[:-9]))
    with pytest.raises(CheckpointError, match="unexpected bytes"):
        parse_ct2_model(bytearray(data + b"\0\0"))
    with pytest.raises(CheckpointError, match="binary version 99"):
        parse_ct2_model(bytearray(struct.pack("<I", 99)) + data[4:])
    with pytest.raises(CheckpointError, match="no variable 'c'"):
        ok.raw("c")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_ct2_model(tmp_path / "missing.bin")
    # split files are read as their concatenation
    (tmp_path / "p1").write_bytes(bytes(data[:50]))
    (tmp_path / "p2").write_bytes(bytes(data[50:]))
    assert torch.equal(read_ct2_model([tmp_path / "p1", tmp_path / "p2"]).raw("a/weight"), torch.ones(2, 3))


def test_legacy_binary_version_3_item_sizes() -> None:
    def s(x: str) -> bytes:
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    w = torch.arange(6, dtype=torch.float32)
    buf = struct.pack("<I", 3) + s("TransformerSpec") + struct.pack("<I", 1) + struct.pack("<I", 1)
    buf += s("w") + struct.pack("<B", 2) + struct.pack("<2I", 2, 3) + struct.pack("<B", 4) + struct.pack("<I", 6) + w.numpy().tobytes()
    buf += struct.pack("<I", 0)
    m = parse_ct2_model(bytearray(buf))
    assert m.spec == "TransformerSpec" and torch.equal(m.float("w"), w.reshape(2, 3))


def test_convert_rejects_other_specs(tmp_path: Path) -> None:
    path = write_ct2_model(tmp_path / "m.bin", "TransformerSpec", 1, {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="WhisperSpec"):
        convert_ct2_whisper(read_ct2_model(path), tmp_path / "out")
    tiny = write_ct2_model(tmp_path / "t.bin", "WhisperSpec", 3, _to_ct2(_tiny_whisper(), torch.float16))
    with pytest.raises(CheckpointError, match="special token ids"):
        convert_ct2_whisper(read_ct2_model(tiny), tmp_path / "out")  # 96 tokens and no vocabulary file
