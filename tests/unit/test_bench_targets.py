"""The target script's arithmetic: medians over repetitions and the ratios it reports against the goals."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def targets():
    with load_script("bench_targets") as module:
        yield module


def report(rates: dict[int, float], p50: dict[int, float], p99: dict[int, float], ceiling=None) -> dict:
    results = [
        {"concurrency": c, "items_per_s": rates[c], "p50_ms": p50[c], "p99_ms": p99[c]} for c in (1, 64)
    ]
    return {"results": results, "ceiling": ceiling}


def repetition(scale: float) -> dict:
    ceiling = {"best_items_per_s": 100.0 * scale, "items_per_s_by_batch_size": {"1": 50.0, "16": 100.0}}
    return {
        "batched": report({1: 40 * scale, 64: 90 * scale}, {1: 24, 64: 500}, {1: 30, 64: 900}, ceiling),
        "naive float32": report({1: 30, 64: 30 * scale}, {1: 30, 64: 2000}, {1: 40, 64: 3000}),
        "naive fastest": report({1: 45, 64: 60}, {1: 22, 64: 1000}, {1: 30, 64: 2000}),
    }


def test_medians_and_ratios(targets) -> None:
    reports = [repetition(1.0), repetition(2.0), repetition(1.1)]
    m = targets.medians(reports)  # medians: the 1.1 run
    assert m["batched 64"]["items_per_s"] == pytest.approx(99.0)
    assert m["ceiling best"] == pytest.approx(110.0)
    ratios = {name: (value, each) for name, value, _, each in targets.target_ratios(reports)}
    # every ratio is taken within one repetition, then the median over repetitions
    assert ratios["served / naive float32 (64 clients)"][0] == pytest.approx(3.0)
    assert ratios["served / naive fastest (64 clients)"][1] == pytest.approx([1.5, 3.0, 1.65])
    assert ratios["served / naive fastest (64 clients)"][0] == pytest.approx(1.65)
    assert ratios["served p99 / naive fastest p99"][0] == pytest.approx(900 / 2000)
    assert ratios["served / in-process ceiling"][0] == pytest.approx(0.9)
    assert ratios["one client: served p50 / in-process single item"][0] == pytest.approx(24 / 20)
    table = targets.markdown(m, targets.target_ratios(reports), "Some CPU", 3)
    assert (
        "Some CPU; medians of 3 repetitions." in table
        and "| served / in-process ceiling | 0.90 | 0.90 / 0.90 / 0.90 | >= 0.9 |" in table
    )


def test_a_ratio_pairs_figures_of_one_repetition_not_medians_of_different_ones(targets) -> None:
    fast, slow = repetition(2.0), repetition(1.0)
    slow["batched"]["ceiling"] = {**slow["batched"]["ceiling"], "best_items_per_s": 95.0}
    ratios = {name: value for name, value, _, _ in targets.target_ratios([fast, slow, slow])}
    assert ratios["served / in-process ceiling"] == pytest.approx(90 / 95)  # not 90 / 100 nor 180 / 95


def test_the_single_item_latency_is_a_lone_batch_not_batches_side_by_side(targets) -> None:
    rep = repetition(1.0)
    rep["batched"]["ceiling"] = {
        **rep["batched"]["ceiling"],
        "items_per_s_by_batch_size": {"1": 90.0, "16": 100.0},  # the better layout: side by side
        "one_at_a_time_by_batch_size": {"1": 50.0, "16": 80.0},
    }
    assert targets.table_of(rep)["ceiling batch 1"] == 50.0
