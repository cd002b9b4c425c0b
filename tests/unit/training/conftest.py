"""Tiny preference data for the training tests: a task a small model separates in a few epochs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.training.pairs import TRAIN, VALIDATION, PreferencePair, write_pairs

POLITE = str.split("thanks glad help sure happy kindly welcome pleasure gladly certainly")
RUDE = str.split("go away whatever nope ugh leave bother annoying useless never")
TOPICS = str.split("eggs trains rivers songs atoms cities python guitars maps bread")


def separable_pairs(count: int, seed: int, split: str = "") -> list[PreferencePair]:
    """Chosen answers use polite words, rejected ones rude words; lengths are drawn alike for both."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        prompt = f"{split} question {i} about {rng.choice(TOPICS)} and {rng.choice(TOPICS)}"
        chosen = " ".join(rng.choice(POLITE) for _ in range(rng.randint(3, 12)))
        rejected = " ".join(rng.choice(RUDE) for _ in range(rng.randint(3, 12)))
        pairs.append(PreferencePair(prompt, chosen, rejected, "polite" if i % 2 else "other", split=split))
    return pairs


@pytest.fixture
def separable_file(tmp_path: Path) -> Path:
    """A prepared pair file: 160 training pairs, 40 validation pairs, prompts disjoint."""
    path = tmp_path / "pairs.jsonl"
    write_pairs(
        path, separable_pairs(160, seed=1, split=TRAIN) + separable_pairs(40, seed=2, split=VALIDATION)
    )
    return path


TINY_TRAIN_ARGS = (
    "--hidden", "32", "--layers", "2", "--heads", "2", "--ffn-ratio", "2", "--max-len", "48",
    "--vocab-size", "300", "--batch-size", "16", "--lr", "3e-3", "--dropout", "0.0", "--threads", "1",
    "--no-progress",
)  # fmt: skip
