"""Answer metrics: normalisation, exact match, containment, word error rate."""

from __future__ import annotations

import pytest
from xmm.errors import ConfigError
from xmm.training.metrics import contains, edit_distance, exact_match, normalize, score, wer


def test_normalize() -> None:
    assert normalize("  The RED, circle!\n") == "the red circle"
    assert normalize("Ｒｅｄ") == "red"  # NFKC folds full-width letters


def test_exact_and_contains() -> None:
    assert exact_match("Red.", "red") == 1.0
    assert exact_match("red circle", "red") == 0.0
    assert contains("It is red.", "red") == 1.0
    assert contains("It is reddish", "red") == 0.0  # word boundaries
    assert contains("anything", "") == 0.0


def test_edit_distance_and_wer() -> None:
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], ["a", "b"]) == 2
    # one substitution + one deletion over 4 reference words, one insertion over 2
    assert wer(["the cat sat", "hello big world"], ["the dog sat down", "hello world"]) == pytest.approx(3 / 6)
    assert wer(["Same, words!"], ["same words"]) == 0.0


def test_score() -> None:
    assert score("exact", ["red", "blue", "Green!"], ["red", "red", "green"]) == pytest.approx(2 / 3)
    assert score("contains", ["a red one"], ["red"]) == 1.0
    assert score("wer", ["a b"], ["a c"]) == 0.5
    with pytest.raises(ConfigError, match="unknown metric"):
        score("bleu", ["a"], ["a"])
