"""The heuristic reward's cases from the design, with default and custom configurations."""

from __future__ import annotations

import pytest

from app.heuristics import HeuristicConfig, heuristic_score

CFG = HeuristicConfig()


def test_a_plain_helpful_answer_keeps_the_full_reward() -> None:
    score = heuristic_score("Put the egg in boiling water for eight minutes.", CFG)
    assert score.reward == 1.0 and score.toxicity == 0.0


def test_toxic_words_cost_up_to_the_toxicity_weight() -> None:
    one_in_twenty = "you " * 19 + "idiot"
    assert heuristic_score(one_in_twenty, CFG).toxicity_penalty == pytest.approx(0.5)
    assert heuristic_score("stupid idiot moron loser trash", CFG).reward == pytest.approx(0.0)


def test_toxicity_below_the_threshold_is_not_penalized() -> None:
    lenient = HeuristicConfig(toxicity_threshold=0.1)
    text = "you are not an idiot at all, my dear friend, it happens to everyone"
    assert heuristic_score(text, lenient).toxicity_penalty == 0.0
    assert heuristic_score(text, CFG).toxicity_penalty > 0.0


def test_short_answers_lose_the_length_penalty_and_long_ones_half_of_it() -> None:
    assert heuristic_score("Yes.", CFG).reward == pytest.approx(0.5)
    long_text = " ".join(f"word{i}" for i in range(401))
    assert heuristic_score(long_text, CFG).reward == pytest.approx(0.75)


def test_repetition_below_half_unique_words_is_penalized() -> None:
    score = heuristic_score("buy now " * 10, CFG)  # 2 unique of 20 words
    assert score.unique_ratio == pytest.approx(0.1)
    assert score.repetition_penalty == pytest.approx(2.0 * 0.4)


def test_keywords_and_weights_are_configurable() -> None:
    custom = HeuristicConfig(toxic_keywords=frozenset({"banana"}), toxicity_weight=0.2, min_words=1)
    assert heuristic_score("idiot", custom).reward == 1.0
    assert heuristic_score("banana", custom).reward == pytest.approx(0.8)
