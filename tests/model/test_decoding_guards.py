"""Decoding guards: end-of-turn ids, per-row answer caps, repetition loops cut, CIF counts turned into caps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from xmm.model.decoding import (
    AnswerCap,
    RepetitionGuard,
    cif_answer_caps,
    end_of_turn_ids,
    repeated_tail,
    strip_repeats,
)


class _Tok:
    eos_token_id = 7
    chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"

    def get_vocab(self) -> dict[str, int]:
        return {"<|im_end|>": 9, "<|eot_id|>": 7, "hello": 3}


def test_end_of_turn_ids_add_the_template_s_marker_once():
    assert end_of_turn_ids(_Tok()) == [7, 9]
    assert end_of_turn_ids(_Tok(), eos=[1, 7]) == [1, 7, 9]
    no_template = _Tok()
    no_template.chat_template = None  # type: ignore[assignment]
    assert end_of_turn_ids(no_template) == [7]  # <|eot_id|> is in the vocabulary but no template uses it


@pytest.mark.parametrize(
    ("ids", "want"),
    [
        ([1, 2, 3, 3, 3], (1, 3)),
        ([5, 1, 2, 1, 2, 1, 2], (2, 3)),
        ([1, 2, 3, 1, 2, 3], (0, 0)),  # twice is not a loop (LibriVox itself says "a more a amiable")
        ([4, 4], (0, 0)),
        ([], (0, 0)),
        ([9, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4], (4, 4)),
    ],
)
def test_repeated_tail(ids, want):
    assert repeated_tail(ids, max_period=4, min_repeats=3) == want


def test_strip_repeats_keeps_one_copy_and_the_end_token():
    assert strip_repeats([5, 1, 2, 1, 2, 1, 2, 0], stop_ids=[0], max_period=4) == [5, 1, 2, 0]
    assert strip_repeats([5, 6, 7], stop_ids=[0]) == [5, 6, 7]


def _step(proc, prefix: list[list[int]], vocab: int = 12) -> torch.Tensor:
    return proc(torch.tensor(prefix), torch.zeros(len(prefix), vocab))


def test_answer_cap_forces_the_end_token_per_row():
    cap = AnswerCap([2, None, 3], stop_id=0)
    prompt = [[4, 4], [4, 4], [4, 4]]
    first = _step(cap, prompt)  # the first call fixes where new tokens start
    assert torch.isfinite(first).all()
    after_two = _step(cap, [r + [1, 2] for r in prompt])
    assert after_two[0, 0] == 0 and torch.isinf(after_two[0, 1:]).all()  # row 0 reached its cap of 2
    assert torch.isfinite(after_two[1]).all() and torch.isfinite(after_two[2]).all()
    after_three = _step(cap, [r + [1, 2, 3] for r in prompt])
    assert torch.isinf(after_three[2, 1:]).all() and torch.isfinite(after_three[1]).all()


def test_repetition_guard_stops_only_looping_rows():
    guard = RepetitionGuard(stop_id=0, max_period=3, min_repeats=3)
    _step(guard, [[1], [1]])
    out = _step(guard, [[1, 5, 5, 5], [1, 5, 6, 7]])
    assert torch.isinf(out[0, 1:]).all() and out[0, 0] == 0
    assert torch.isfinite(out[1]).all()


def test_cif_answer_caps_sum_a_rows_items():
    media = [SimpleNamespace(batch_index=0), SimpleNamespace(batch_index=2), SimpleNamespace(batch_index=0)]
    aux = {"speech": {"cif_tokens": torch.tensor([4, 8, 2])}, "image": {}}
    groups = {"speech": [0, 1, 2]}
    assert cif_answer_caps(aux, groups, media, 3, slack=0.25, extra=2) == [10, None, 12]


def test_generation_caps_each_answer_by_the_tokens_its_cif_bridge_fired(registry, tiny_llm, tiny_config, media_dir):
    from xmm.model import MultimodalLM

    cformer = {"type": "cformer", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "cif_channels": 8,
               "cif_tail_threshold": 0.0}
    torch.manual_seed(0)
    model = MultimodalLM.from_config(tiny_config(modalities={"audio": {"bridge": cformer}}), llm=tiny_llm,
                                     registry=registry)
    convs = [[{"role": "user", "content": [{"type": "audio", "path": str(media_dir / name)},
                                           {"type": "text", "text": "What is said?"}]}] for name in ("short.npy", "long.npy")]
    batch = model.collator(padding_side="left", add_generation_prompt=True)(
        [{"messages": c, "base_dir": media_dir} for c in convs])
    with torch.no_grad():
        _, aux, groups = model.embed(batch)
    caps = cif_answer_caps(aux, groups, list(batch.media), 2)
    assert all(c is not None and c >= 2 for c in caps)
    out = model.generate(convs, max_new_tokens=max(caps) + 20, do_sample=False)
    eos = set(end_of_turn_ids(model.tokenizer))
    for ids, cap in zip(out.token_ids, caps):
        assert len([t for t in ids if t not in eos]) <= cap
