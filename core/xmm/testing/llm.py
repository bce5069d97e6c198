"""Tiny random LLMs for tests: a Llama of a few thousand parameters with a real tokenizer and chat template.

One builder for every test that needs an LLM: :func:`tiny_tokenizer` trains a small byte-level BPE tokenizer with a
ChatML template (no download), :func:`build_tiny_llm` makes the model in memory, :func:`save_tiny_llm` writes both to
a folder that ``xmm.llm.load_llm`` and ``MultimodalLM.from_config({"llm": folder})`` load like any local LLM.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_CORPUS = ("Which colour is it? red green blue yellow", "user assistant system", "What is the vector?")
TINY_REVISION = "tiny"


def tiny_tokenizer(corpus: Sequence[str] = TINY_CORPUS, *, vocab_size: int = 320) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus`` with a ChatML chat template.

    Any text encodes (the byte alphabet is always in the vocabulary); words of the corpus become single tokens.
    Specials: ``<|endoftext|>`` (id 0, pad and unk), ``<|im_start|>`` (1, bos), ``<|im_end|>`` (2, eos).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # repeated so that every pair of the corpus is frequent enough to be merged
    tok.train_from_iterator(list(corpus) * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_llm(tokenizer: Any = None, *, vocab_size: int | None = None, seed: int = 0, hidden_size: int = 32,
                   num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2, tied: bool = True,
                   **config: Any) -> Any:
    """A random ``LlamaForCausalLM``, frozen and in eval mode; the same arguments give the same weights.

    Args:
        tokenizer: gives the vocabulary size and the bos/eos/pad ids (written into the config and the generation
            config); ``None`` needs ``vocab_size``.
        hidden_size, num_layers, num_heads, num_kv_heads: the shape (the MLP is ``2 * hidden_size`` wide).
        tied: input and output embeddings share one matrix.
        **config: any other ``LlamaConfig`` field (e.g. ``initializer_range``, ``attn_implementation``).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if tokenizer is None and vocab_size is None:
        raise ValueError("build_tiny_llm needs a tokenizer or a vocab_size")
    ids: dict[str, Any] = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    ids.update({k: config.pop(k) for k in list(config) if k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    cfg = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                      max_position_embeddings=config.pop("max_position_embeddings", 1024), tie_word_embeddings=tied,
                      **ids, **config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if ids:
        model.generation_config = GenerationConfig(**ids)
    model.requires_grad_(False)
    return model.eval()


def save_tiny_llm(path: str | Path, tokenizer: Any = None, *, revision: str = TINY_REVISION, **build: Any) -> Path:
    """Save a tiny LLM and its tokenizer to ``path`` (created); returns ``path``.

    ``tokenizer``: ``None`` for :func:`tiny_tokenizer`, a tokenizer object, or a folder to load one from (its
    ``chat_template.jinja`` is copied along). ``build`` goes to :func:`build_tiny_llm`. The folder's
    ``xmm_llm.json`` gives the LLM the revision ``revision`` in checkpoint manifests.
    """
    path = Path(path)
    source = None
    if tokenizer is None:
        tokenizer = tiny_tokenizer()
    elif isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        source = Path(tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(source)
    model = build_tiny_llm(tokenizer, **build)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if source is not None and (source / "chat_template.jinja").exists() and not (path / "chat_template.jinja").exists():
        shutil.copy(source / "chat_template.jinja", path / "chat_template.jinja")
    (path / "xmm_llm.json").write_text(json.dumps({"revision": revision}) + "\n")
    return path
