from __future__ import annotations

import numpy as np
import pytest

from app.training.evaluate import ScoredPairs, calibration, group_report, pair_accuracy
from app.training.pairs import PreferencePair
from app.training.refusal import REFUSALS, refusal_check


def scored(model_chosen, model_rejected, len_chosen, len_rejected) -> ScoredPairs:
    n = len(model_chosen)
    arrays = lambda c, r: (np.array(c, dtype=float), np.array(r, dtype=float))  # noqa: E731
    zeros = arrays([0.0] * n, [0.0] * n)
    pairs = [PreferencePair(f"p{i}", "c", "r", "s") for i in range(n)]
    return ScoredPairs(
        pairs, arrays(model_chosen, model_rejected), zeros, zeros, arrays(len_chosen, len_rejected)
    )


def test_ties_count_half() -> None:
    assert pair_accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])) == pytest.approx(0.5)
    assert pair_accuracy(np.array([]), np.array([])) is None


def test_length_rules_and_length_controlled_accuracies() -> None:
    # pairs 0-1: chosen much longer, model right; pair 2: chosen shorter, model wrong; pair 3: matched, right
    report = group_report(scored([2, 2, 0, 1], [1, 1, 1, 0], [300, 300, 100, 100], [100, 100, 300, 110]))
    acc = report["accuracy"]
    assert acc["model"] == pytest.approx(0.75)
    assert acc["longer_wins"] == pytest.approx(0.5) and acc["shorter_wins"] == pytest.approx(0.5)
    assert acc["chosen_shorter"] == pytest.approx(0.5) and report["n_chosen_shorter"] == 2
    assert acc["length_matched"] == pytest.approx(1.0) and report["n_length_matched"] == 1
    assert acc["heuristic"] == pytest.approx(0.5)  # all-zero heuristic: every pair a tie


def test_beats_empty_compares_the_chosen_answer_with_silence_for_model_and_hybrid() -> None:
    base = scored([2, 2, 0, 1], [1, 1, 1, 0], [300, 300, 100, 100], [100, 100, 300, 110])
    assert "beats_empty" not in group_report(base)["accuracy"]  # no empty responses scored
    # model: silence beats pair 2 only; hybrid (all zero): every pair ties silence
    base.empty = (np.array([1.0, 1.0, 1.0, 0.5]), np.array([-1.0, 0.0, 0.0, 1.0]))
    acc = group_report(base)["accuracy"]
    assert acc["beats_empty"] == pytest.approx(0.75)
    assert acc["hybrid_beats_empty"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    half = group_report(base.subset(np.array([True, False, True, False])))["accuracy"]
    assert half["beats_empty"] == pytest.approx(0.5) and half["hybrid_beats_empty"] == pytest.approx(0.75)


def test_refusal_check_compares_refusals_with_the_chosen_and_the_rejected_answer() -> None:
    base = scored([2, 2, 0, 1], [1, 1, 1, 0], [300, 300, 100, 100], [100, 100, 300, 110])
    assert "beats_refusal" not in group_report(base)["accuracy"]
    # two refusals per pair; the chosen answer beats both on pairs 0-1, ties one on pairs 2 and 3
    model = np.array([[1.0, 1.5], [0.0, -1.0], [3.0, 0.0], [1.0, 0.5]])
    base.refusal = (model, np.zeros((4, 2)))  # hybrid: every refusal ties the all-zero hybrid
    acc = group_report(base)["accuracy"]
    assert acc["beats_refusal"] == pytest.approx((2 + 2 + 0.5 + 1.5) / 8)
    assert acc["refusal_beats_rejected"] == pytest.approx((1.5 + 0 + 1 + 2) / 8)
    assert acc["hybrid_beats_refusal"] == pytest.approx(0.5) == acc["hybrid_refusal_beats_rejected"]
    first = group_report(base.subset(np.array([True, False, False, False])))["accuracy"]
    assert first["beats_refusal"] == pytest.approx(1.0) and first["refusal_beats_rejected"] == pytest.approx(
        0.75
    )


def test_refusal_check_scores_each_prompt_with_every_refusal_per_source() -> None:
    pairs = [PreferencePair(f"p{i}", "c", "r", "helpful" if i < 2 else "harmless") for i in range(3)]
    asked = []

    def score(prompts: list[str], responses: list[str]) -> np.ndarray:
        asked.extend(zip(prompts, responses, strict=True))
        return np.array([1.0 if prompt == "p0" else -1.0 for prompt in prompts])  # refusals score 1 on p0

    chosen, rejected = np.zeros(3), np.array([0.0, 0.0, 5.0])
    report = refusal_check(pairs, chosen, rejected, score)
    assert sorted(asked) == sorted((p.prompt, r) for p in pairs for r in REFUSALS)
    assert report["helpful"] == {"n": 2, "beats_refusal": 0.5, "refusal_beats_rejected": 0.5}
    assert report["harmless"] == {"n": 1, "beats_refusal": 1.0, "refusal_beats_rejected": 0.0}
    assert report["all"]["n"] == 3 and report["all"]["beats_refusal"] == pytest.approx(2 / 3)


def test_a_length_detector_correlates_with_length() -> None:
    lengths_c, lengths_r = [10, 200, 50, 400], [100, 20, 300, 40]
    report = group_report(scored(lengths_c, lengths_r, lengths_c, lengths_r))
    assert report["length_correlation"] == pytest.approx(1.0)
    assert report["accuracy"]["model"] == report["accuracy"]["longer_wins"]


def test_calibration_buckets_compare_accuracy_with_sigmoid_of_the_gap() -> None:
    gaps = np.array([0.1, -0.1, 0.2, 3.0, 3.5])
    buckets = calibration(gaps, np.zeros_like(gaps))
    assert sum(b["n"] for b in buckets) == 5
    low, top = buckets[0], buckets[-1]
    assert low["n"] == 3 and low["accuracy"] == pytest.approx(2 / 3)
    assert top["n"] == 2 and top["accuracy"] == 1.0 and 0.9 < top["predicted"] < 1.0
