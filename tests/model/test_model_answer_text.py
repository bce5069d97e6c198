"""Answers are stripped the same way everywhere: generate/chat texts and the joined pieces of a stream."""

from __future__ import annotations

import pytest
from xmm.model.generation import answer_text, stripped_pieces


@pytest.mark.parametrize("pieces", [
    ["one", "\n"], [" one", " two", "\n", ""], ["\n", "  ", "one", " ", "two  ", "\n\n"], ["", " "], ["a\nb", " c "],
])
def test_stream_pieces_join_to_the_stripped_answer(pieces: list[str]) -> None:
    out = list(stripped_pieces(pieces))
    assert "".join(out) == "".join(pieces).strip()
    assert all(out)  # no empty piece


def test_answer_text_strips_and_drops_special_tokens(tiny_llm) -> None:
    tok = tiny_llm.tokenizer
    ids = tok("one\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert answer_text(tok, ids) == "one"


def test_generate_and_chat_give_stripped_text(tiny_model) -> None:
    result = tiny_model.generate("Say something.", max_new_tokens=6)
    assert result.texts[0] == result.texts[0].strip()
    assert tiny_model.chat("Say something.", max_new_tokens=6) == result.texts[0]
    assert "".join(tiny_model.stream("Say something.", max_new_tokens=6)) == result.texts[0]
