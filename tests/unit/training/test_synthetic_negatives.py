from __future__ import annotations

import pytest

from app.heuristics import HeuristicConfig, heuristic_score
from app.training.pairs import PreferencePair
from app.training.refusal import REFUSALS
from app.training.synthetic import HARMFUL_SOURCES, KINDS, SYNTHETIC_SOURCE, TRAINING_REFUSALS, synthesize

BASES = [
    PreferencePair(
        f"prompt {i}", f"answer {i} explains the steps one by one with care and detail", "bad", "src"
    )
    for i in range(20)
]


def by_kind(count: int = 50) -> dict[str, list[PreferencePair]]:
    out: dict[str, list[PreferencePair]] = {}
    for pair in synthesize(BASES, count, seed=0):
        out.setdefault(pair.kind, []).append(pair)
    return out


def test_every_kind_is_made_and_tagged() -> None:
    made = by_kind()
    assert set(made) == set(KINDS)
    for pairs in made.values():
        for pair in pairs:
            assert pair.source == SYNTHETIC_SOURCE
            assert pair.rejected != pair.chosen
            assert pair.chosen in {b.chosen for b in BASES}


def test_kinds_damage_the_text_as_named() -> None:
    made = by_kind()
    for pair in made["truncation"]:
        assert pair.chosen.startswith(pair.rejected) and len(pair.rejected) < len(pair.chosen)
    for pair in made["shuffle"]:
        assert sorted(pair.rejected.split()) == sorted(pair.chosen.split())
    for pair in made["repetition"]:
        assert len(pair.rejected.split()) > len(set(pair.rejected.split())) + 4
    for pair in made["off_topic"]:
        assert pair.rejected in {b.chosen for b in BASES if b.prompt != pair.prompt}
    assert made["empty"] and all(pair.rejected == "" for pair in made["empty"])
    assert made["refusal"] and all(pair.rejected in TRAINING_REFUSALS for pair in made["refusal"])


def test_refusals_are_negatives_on_benign_prompts_only_and_not_the_checked_wordings() -> None:
    [harmful] = HARMFUL_SOURCES
    mixed = [
        PreferencePair(b.prompt, b.chosen, b.rejected, harmful if i % 2 else "helpful")
        for i, b in enumerate(BASES)
    ]
    refusals = [p for p in synthesize(mixed, 70, seed=0) if p.kind == "refusal"]
    benign_prompts = {b.prompt for b in mixed if b.source == "helpful"}
    assert len(refusals) == 10 and all(p.prompt in benign_prompts for p in refusals)
    only_harmful = [PreferencePair(b.prompt, b.chosen, b.rejected, harmful) for b in BASES]
    made = synthesize(only_harmful, 70, seed=0)
    assert len(made) == 60 and "refusal" not in {p.kind for p in made}
    # the refusal check scores wordings the model was not trained on
    assert not set(TRAINING_REFUSALS) & set(REFUSALS)


def test_refusals_over_harm_pair_a_refusal_with_the_harmful_answer_of_harmful_prompts_only() -> None:
    [harmful] = HARMFUL_SOURCES
    mixed = [
        PreferencePair(b.prompt, b.chosen, f"harmful {i}", harmful if i % 2 else "helpful")
        for i, b in enumerate(BASES)
    ]
    made = synthesize(mixed, 20, seed=0, kinds=("refusal_over_harm", "empty"))
    positives = [p for p in made if p.kind == "refusal_over_harm"]
    by_prompt = {b.prompt: b for b in mixed}
    assert len(positives) == 10
    for pair in positives:
        assert by_prompt[pair.prompt].source == harmful and pair.source == SYNTHETIC_SOURCE
        assert pair.chosen in TRAINING_REFUSALS and pair.rejected == by_prompt[pair.prompt].rejected
    assert "refusal_over_harm" not in {p.kind for p in synthesize(mixed, 80, seed=0)}  # opt-in only


def test_kinds_can_be_chosen() -> None:
    made = synthesize(BASES, 12, seed=0, kinds=("empty", "refusal"))
    assert [p.kind for p in made] == ["empty", "refusal"] * 6
    with pytest.raises(ValueError, match="unknown synthetic kinds"):
        synthesize(BASES, 5, seed=0, kinds=("silence",))


def test_toxic_insertions_are_seen_by_the_heuristic() -> None:
    cfg = HeuristicConfig()
    for pair in by_kind()["toxic"]:
        assert heuristic_score(pair.rejected, cfg).toxicity > 0
        assert heuristic_score(pair.chosen, cfg).toxicity == 0


def test_synthetic_pairs_keep_the_split_of_their_prompt() -> None:
    bases = [
        PreferencePair(b.prompt, b.chosen, b.rejected, b.source, split=f"s{i % 2}")
        for i, b in enumerate(BASES)
    ]
    split_of = {b.prompt: b.split for b in bases}
    assert all(p.split == split_of[p.prompt] for p in synthesize(bases, 40, seed=1))


def test_same_seed_same_negatives() -> None:
    assert synthesize(BASES, 30, seed=5) == synthesize(BASES, 30, seed=5)


def test_too_short_answers_cannot_be_perturbed() -> None:
    with pytest.raises(ValueError, match="words to perturb"):
        synthesize([PreferencePair("p", "ok", "no", "s")], 5, seed=0)
