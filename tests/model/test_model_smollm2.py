"""With the real SmolLM2-135M-Instruct: text-only generation equals the plain model's; a bridge end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from xmm.llm import load_llm
from xmm.model import MultimodalLM

pytestmark = [pytest.mark.llm, pytest.mark.slow]

PROMPTS = ["What is the capital of France?", "Name a colour."]


def _plain_greedy(llm, tok, prompts: list[str], *, bf16: bool) -> list[list[int]]:
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        out = llm.generate(**enc, max_new_tokens=10, do_sample=False)[:, enc["input_ids"].shape[1]:]
    return [row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row for row in out.tolist()]


def test_text_only_equals_plain_smollm2_and_a_bridge_end_to_end(registry, smollm2_dir: Path, media_dir: Path, tmp_path: Path) -> None:
    loaded = load_llm()
    llm, tok = loaded.model, loaded.tokenizer
    ref32 = _plain_greedy(llm, tok, PROMPTS, bf16=False)
    ref16 = _plain_greedy(llm, tok, PROMPTS, bf16=True)
    assert tok.decode(ref32[0], skip_special_tokens=True) == "The capital of France is Paris."

    # a Q-Former bridge (small) for the tiny test image modality; placeholders are added to SmolLM2's tokenizer
    qformer = {"type": "qformer", "num_queries": 4, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}
    model = MultimodalLM.from_config({"modalities": {"image": {"bridge": qformer}, "audio": {}}, "autocast": "off"},
                                     llm=loaded, registry=registry)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert model.generate(convs, max_new_tokens=10).token_ids == ref32
    model.config = model.config.model_copy(update={"autocast": "bf16"})
    assert model.generate(convs, max_new_tokens=10).token_ids == ref16
    model.config = model.config.model_copy(update={"autocast": "off"})

    # media: two images and an audio clip, answered by the real LLM through untrained bridges
    msgs = [{"role": "user", "content": [{"type": "image", "path": "red.png"}, {"type": "text", "text": " and "},
                                         {"type": "audio", "path": "long.npy"}, {"type": "image", "path": "blue.png"},
                                         {"type": "text", "text": "Describe them."}]}]
    answer = model.generate({"messages": msgs, "base_dir": media_dir}, max_new_tokens=6)
    assert len(answer.token_ids[0]) >= 1 and answer.prompt_lengths[0] > 4 + 5 + 4

    ck = model.save_pretrained(tmp_path / "ck")
    size = sum(p.stat().st_size for p in ck.rglob("*") if p.is_file())
    llm_bytes = sum(p.numel() * p.element_size() for p in llm.parameters())
    assert size < 0.05 * llm_bytes  # bridges + new rows only
    reloaded = MultimodalLM.from_pretrained(ck)  # loads SmolLM2 itself from the manifest and checks its fingerprint
    again = reloaded.generate({"messages": msgs, "base_dir": media_dir}, max_new_tokens=6)
    assert again.token_ids == answer.token_ids
