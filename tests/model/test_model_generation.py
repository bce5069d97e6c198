"""Generation on the tiny LLM: text-only equals the plain LLM (greedy, sampled, batched), streaming, media."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from xmm.llm import load_llm
from xmm.model import GenerationResult

PROMPTS = ["What is the capital of France?", "hi"]


def _plain(llm_dir: Path, prompts: list[str], device: torch.device, **kw) -> list[list[int]]:
    """The plain LLM's answers, on ``device``: sampling draws from that device's generator."""
    loaded = load_llm(str(llm_dir), device=str(device))
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    out = model.generate(**enc, max_new_tokens=8, **kw)[:, enc["input_ids"].shape[1]:]
    rows = []
    for row in out.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
        rows.append(row[:cut])
    return rows


def test_text_only_greedy_equals_plain_llm_batched(tiny_model, tiny_llm_dir: Path) -> None:
    ref = _plain(tiny_llm_dir, PROMPTS, tiny_model.device, do_sample=False)
    res = tiny_model.generate([[{"role": "user", "content": p}] for p in PROMPTS], max_new_tokens=8)
    assert isinstance(res, GenerationResult)
    assert res.token_ids == ref
    single = tiny_model.generate(PROMPTS[0], max_new_tokens=8)
    assert single.token_ids == [ref[0]]


def test_text_only_sampling_equals_plain_llm_with_same_seed(tiny_model, tiny_llm_dir: Path) -> None:
    torch.manual_seed(123)
    ref = _plain(tiny_llm_dir, PROMPTS[:1], tiny_model.device, do_sample=True, temperature=0.8, top_p=0.9)
    res = tiny_model.generate(PROMPTS[0], max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, seed=123)
    assert res.token_ids == ref
    again = tiny_model.generate(PROMPTS[0], max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, seed=123)
    assert again.token_ids == res.token_ids


def test_stream_matches_generate(tiny_model, media_dir: Path) -> None:
    msgs = [{"role": "user", "content": [{"type": "image", "path": str(media_dir / "red.png")}, {"type": "text", "text": "colour?"}]}]
    full = tiny_model.generate(msgs, max_new_tokens=6)
    stream = tiny_model.stream(msgs, max_new_tokens=6)
    pieces = list(stream)
    assert "".join(pieces) == full.text
    assert stream.result.token_ids == full.token_ids


def test_media_changes_the_answer_and_batches_mix(tiny_model, media_dir: Path) -> None:
    # with a bridge scaled up, the spliced media must change what the model sees (and so its greedy output logits)
    with torch.no_grad():
        for p in tiny_model.bridges["image"].parameters():
            p.mul_(50)
    red = [{"role": "user", "content": [{"type": "image", "path": str(media_dir / "red.png")}, {"type": "text", "text": "?"}]}]
    blue = [{"role": "user", "content": [{"type": "image", "path": str(media_dir / "blue.png")}, {"type": "text", "text": "?"}]}]
    a = tiny_model.generate(red, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    b = tiny_model.generate(blue, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    assert not torch.allclose(a.raw.scores[0], b.raw.scores[0])
    # a mixed batch (left padded) gives each row what it gives alone
    both = tiny_model.generate([red, [{"role": "user", "content": "plain text, longer than the other prompt"}]], max_new_tokens=4)
    alone = tiny_model.generate([{"role": "user", "content": "plain text, longer than the other prompt"}], max_new_tokens=4)
    assert both.token_ids[0] == a.token_ids[0]
    assert both.token_ids[1] == alone.token_ids[0]


def test_stream_reraises_errors_from_the_generation_thread(tiny_model, monkeypatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("generation exploded")

    monkeypatch.setattr(tiny_model.llm, "generate", boom)
    with pytest.raises(RuntimeError, match="generation exploded"):
        list(tiny_model.stream("hi", max_new_tokens=3))


def test_chat_returns_text(tiny_model) -> None:
    assert tiny_model.chat("hi", max_new_tokens=3) == tiny_model.generate("hi", max_new_tokens=3).text


def test_generation_runs_without_dropout_and_restores_the_mode(registry, tiny_llm, tiny_config) -> None:
    from xmm.model import MultimodalLM

    qformer = {"type": "qformer", "num_queries": 2, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
               "intermediate_size": 16, "hidden_dropout": 0.5, "attention_dropout": 0.5}
    model = MultimodalLM.from_config(tiny_config(modalities={"device": {"bridge": qformer}}), llm=tiny_llm, registry=registry)
    model.train()
    msgs = [{"role": "user", "content": [{"type": "device", "device": [1, 2, 3, 4]}, {"type": "text", "text": "status?"}]}]
    a = model.generate(msgs, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    b = model.generate(msgs, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(a.raw.scores[0], b.raw.scores[0])
    assert model.training and model.bridges["device"].training
