"""Fixtures of the device plugin tests."""

from __future__ import annotations

from typing import Any

import pytest


def snapshot(ts: str = "2024-05-01T12:00:00Z", **over: Any) -> dict[str, Any]:
    """A complete, valid raw snapshot; keyword arguments replace top-level fields."""
    base: dict[str, Any] = {
        "timestamp": ts,
        "battery": {"level": 54, "charging": False},
        "temperature": 36.5,
        "cpu_load": 35,
        "memory_load": 61,
        "storage": {"used": 100, "total": 128},
        "network": {"type": "wifi", "signal": 80},
        "screen": {"on": True, "brightness": 70},
        "volume": 40,
        "location_permission": "while_in_use",
        "foreground_app": "maps",
    }
    base.update(over)
    return base


@pytest.fixture
def make_snapshot():
    return snapshot


@pytest.fixture
def device_registry():
    """A registry rebuilt from the installed entry points for the test, forgotten afterwards."""
    from xmm.registry import get_registry, reset_registry

    reset_registry()
    yield get_registry()
    reset_registry()


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def device_tiny_llm(tmp_path_factory):
    """A 2-layer random Llama (hidden 32) with a small byte-level BPE tokenizer and a ChatML template, on disk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("device_tiny_llm")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Is the battery low? yes no wifi 4g 5g none", "set_brightness(level=30) no_action() toggle_wifi(on=true)",
              "battery ok, not charging; temperature normal; network wifi", "user assistant system"] * 10
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      bos_token_id=fast.bos_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture
def one_thread(monkeypatch, tmp_path):
    """Tiny models gain nothing from threads, and on a busy CPU spinning OpenMP threads slow them down a lot."""
    import torch

    monkeypatch.setenv("XMM_HOME", str(tmp_path / "xmm_home"))
    monkeypatch.setenv("XMM_NO_PROGRESS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
