"""Fixtures of the trainer tests: a tiny random Llama with a tiny tokenizer on disk, the `vec` test modality,
and a synthetic task (a vector's pattern -> a colour word) written as JSONL manifests."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
COLOURS = ["red", "green", "blue", "yellow"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_llm(path: Path) -> Path:
    """A 2-layer random Llama (hidden 32) and a byte-level BPE tokenizer with a ChatML template, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Which colour is it? " + " ".join(COLOURS), "user assistant system", "What is the vector?"] * 20
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      bos_token_id=fast.bos_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def write_task(root: Path, n: int, *, name: str = "train.jsonl", seed: int = 0, bad_lines: bool = False) -> Path:
    """`n` examples: a vector whose hot position (0..3) names a colour. Media paths are relative to the manifest."""
    rng = random.Random(seed)
    (root / "vec").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        k = i % len(COLOURS)
        values = [rng.uniform(-0.1, 0.1) for _ in range(8)]
        values[k] += 1.0
        values[k + 4] -= 1.0
        rel = f"vec/{name.split('.')[0]}-{i}.vec"
        (root / rel).write_text(" ".join(f"{v:.4f}" for v in values))
        lines.append({"messages": [
            {"role": "user", "content": [{"type": "vec", "path": rel}, {"type": "text", "text": "Which colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": COLOURS[k]}]},
        ]})
    text = "".join(json.dumps(x) + "\n" for x in lines)
    if bad_lines:
        (root / "vec" / "corrupt.vec").write_text("not numbers at all")
        text += "{this is not json\n"
        text += json.dumps({"messages": [{"role": "user", "content": [{"type": "vec", "path": "vec/missing.vec"}]},
                                         {"role": "assistant", "content": "red"}]}) + "\n"
        text += json.dumps({"messages": [{"role": "user", "content": [{"type": "vec", "path": "vec/corrupt.vec"}]},
                                         {"role": "assistant", "content": "red"}]}) + "\n"
    path = root / name
    path.write_text(text)
    return path


def tiny_plan(root: Path, llm_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A plan dict (paths relative to `root`) training the MLP bridge of the `vec` modality."""
    stage = {"name": "align", "trainable": ["bridge:vec"], "data": {"train": "train.jsonl"},
             "objectives": {"lm": 1.0}, "optimizer": {"lr": 3e-3}, "max_steps": 6, "batch_size": 4,
             "mixed_precision": "no"}
    stage.update(overrides.pop("stage", {}))
    plan = {
        "model": {"llm": str(llm_dir), "modalities": {"vec": {}}, "autocast": "off"},
        "plugins": ["xmm_tiny_training_plugin"],
        "output_dir": "run",
        "cache_dir": "cache",
        "seed": 3,
        "stages": [stage],
    }
    plan.update(overrides)
    return plan


def write_plan(root: Path, plan: dict[str, Any], name: str = "plan.yaml") -> Path:
    import yaml

    path = root / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def subprocess_env(tmp: Path) -> dict[str, str]:
    """Environment for `xmm` subprocesses: the test plugin importable, a private XMM_HOME, no progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XMM_HOME"] = str(tmp / "xmm_home")
    env["XMM_NO_PROGRESS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import torch

    monkeypatch.setenv("XMM_HOME", str(tmp_path / "xmm_home"))
    monkeypatch.setenv("XMM_NO_PROGRESS", "1")
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    # tiny models gain nothing from more threads, and on a busy CPU spinning OpenMP threads make them 5x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    write_task(root, 16)
    return root


@pytest.fixture
def tiny_model(tiny_llm: Path) -> Any:
    """A MultimodalLM: tiny Llama + `vec` modality with an MLP bridge."""
    from xmm.model import MultimodalLM
    from xmm.training.plugins import import_plugins

    import_plugins(["xmm_tiny_training_plugin"])
    import torch

    torch.manual_seed(0)
    return MultimodalLM.from_config({"llm": str(tiny_llm), "modalities": {"vec": {}}, "autocast": "off"})
