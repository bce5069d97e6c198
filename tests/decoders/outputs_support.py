"""Helpers shared by the output-side tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch

TINY_PROJECTOR = {"type": "transformer", "hidden_dim": 32, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1}


def build_tiny_llm(tokenizer_path: str, seed: int = 0, *, tied: bool = True):
    """``(model, tokenizer, info)``: a 2-layer random Llama of width 64 over SmolLM2's tokenizer; the same ``seed``
    gives the same weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tied,
    )
    llm = LlamaForCausalLM(config)
    llm.requires_grad_(False)
    llm.eval()
    return llm, tok, {"id": "tiny-llama", "revision": f"random-{seed}"}
