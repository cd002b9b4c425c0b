"""Reward arithmetic: mixing weights, batch z-score, clipping, running statistics and their snapshot."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from app.normalize import (
    EmaStats,
    NamespacesFull,
    RunningStats,
    batch_zscore,
    clip,
    mixing_weights,
    write_snapshot,
)


def test_mixing_weights_are_normalized_to_sum_one() -> None:
    assert mixing_weights(None, None, (0.5, 0.5)) == (0.5, 0.5)
    assert mixing_weights(0.2, None, (0.5, 0.5)) == pytest.approx((0.2, 0.8))
    assert mixing_weights(None, 0.3, (0.5, 0.5)) == pytest.approx((0.7, 0.3))
    assert mixing_weights(1.0, 1.0, (0.5, 0.5)) == (0.5, 0.5)
    with pytest.raises(ValueError):
        mixing_weights(0.0, 0.0, (0.5, 0.5))


def test_batch_zscore_has_zero_mean_and_unit_std() -> None:
    rng = random.Random(0)
    values = [rng.gauss(3.0, 2.0) for _ in range(50)]
    z = batch_zscore(values, eps=1e-9)
    assert sum(z) / len(z) == pytest.approx(0.0, abs=1e-9)
    assert math.sqrt(sum(v * v for v in z) / len(z)) == pytest.approx(1.0, abs=1e-6)


def test_batch_zscore_of_one_item_or_equal_items_is_zero() -> None:
    assert batch_zscore([4.2], eps=1e-6) == [0.0]
    assert batch_zscore([1.5, 1.5, 1.5], eps=1e-6) == [0.0, 0.0, 0.0]


def test_clip_bounds_symmetrically_and_none_keeps_values() -> None:
    assert clip([-5.0, -0.5, 0.5, 5.0], 1.0) == [-1.0, -0.5, 0.5, 1.0]
    assert clip([-5.0, 5.0], None) == [-5.0, 5.0]


def test_running_stats_converge_to_the_stream_distribution() -> None:
    rng = random.Random(1)
    stats = RunningStats(momentum=0.95, eps=1e-6, max_namespaces=4)
    for _ in range(400):
        stats.normalize("run", [rng.gauss(10.0, 3.0) for _ in range(8)])
    ema = stats.get("run")
    assert ema.count == 3200
    assert ema.mean == pytest.approx(10.0, abs=0.5)
    assert math.sqrt(ema.variance) == pytest.approx(3.0, abs=0.5)
    z = stats.normalize("run", [10.0, 13.0])
    assert z[0] == pytest.approx(0.0, abs=0.3) and z[1] == pytest.approx(1.0, abs=0.3)


def test_first_running_request_is_standardized_by_its_own_statistics() -> None:
    stats = RunningStats(momentum=0.9, eps=1e-9, max_namespaces=4)
    assert stats.normalize("run", [1.0, 3.0]) == pytest.approx([-1.0, 1.0])
    assert stats.normalize("other", [7.0]) == [0.0]


def test_namespaces_are_isolated_and_reset_forgets_one() -> None:
    stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=4)
    stats.normalize("a", [1.0, 2.0])
    stats.normalize("b", [100.0, 200.0])
    assert stats.get("a").mean == pytest.approx(1.5)
    assert stats.reset("a") and stats.get("a") is None
    assert stats.get("b").mean == pytest.approx(150.0)
    assert not stats.reset("a")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_namespace_is_evicted_once_idle_long_enough() -> None:
    clock = FakeClock()
    stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=2, idle_evict_s=60.0, clock=clock)
    stats.normalize("a", [1.0])
    stats.normalize("b", [1.0])
    clock.now += 30
    stats.normalize("a", [1.0])  # a is now the most recent
    clock.now += 31  # b idle 61 s, a 31 s
    stats.normalize("c", [1.0])
    assert stats.get("b") is None and stats.get("a") is not None and len(stats) == 2


def test_a_full_table_refuses_new_namespaces_instead_of_evicting_live_runs() -> None:
    clock = FakeClock()
    stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=3, idle_evict_s=60.0, clock=clock)
    stats.normalize("live-run", [1.0, 2.0])
    before = stats.get("live-run")
    for n in range(2):
        stats.normalize(f"ns-{n}", [0.0])
    clock.now += 59
    for n in range(2, 1030):
        with pytest.raises(NamespacesFull) as refused:
            stats.normalize(f"ns-{n}", [0.0])
    assert refused.value.retry_after == 1
    assert stats.get("live-run") == before and len(stats) == 3
    stats.normalize("live-run", [1.5])  # a known namespace always updates
    assert stats.reset("ns-0")
    stats.normalize("new-run", [1.0])  # a freed slot is taken at once
    assert stats.get("new-run") is not None


@pytest.mark.parametrize("values", [[], [math.nan], [math.inf, -math.inf]])
def test_empty_or_non_finite_input_creates_no_namespace(values: list[float]) -> None:
    stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=1, idle_evict_s=60.0)
    assert len(stats.normalize("run", values)) == len(values)
    assert stats.get("run") is None and len(stats) == 0
    assert batch_zscore([], eps=1e-6) == []


def test_non_finite_and_overflowing_values_never_enter_the_statistics(tmp_path: Path) -> None:
    stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=4)
    stats.normalize("run", [1.0, 3.0])
    before = stats.get("run")
    stats.normalize("run", [math.nan, math.inf, 2.0])  # only the finite 2.0 is folded in
    assert stats.get("run").count == before.count + 1 and stats.get("run").sane
    stats.normalize("run", [1e300, -1e300])  # its variance overflows: no update
    stats.normalize("run", [1e200])  # so does the shift of its mean: no update
    assert stats.get("run").sane and stats.get("run").count == before.count + 1
    write_snapshot(tmp_path / "s.json", stats.to_dict())
    json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in snapshot"))


@pytest.mark.parametrize(
    "snapshot",
    ['{"format": 1, "namespaces": []}', '{"format": 1, "namespaces": null}', "[]", '"x"', "1e400",
     '{"format": 1}', '{"format": "1", "namespaces": {}}'],
)  # fmt: skip
def test_unusable_snapshots_are_a_value_error(tmp_path: Path, snapshot: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(snapshot)
    with pytest.raises(ValueError):
        RunningStats(0.9, 1e-6, 8).restore(path)


def test_malformed_snapshot_entries_are_skipped_and_the_rest_restored(tmp_path: Path) -> None:
    good = {"mean": 1.0, "variance": 0.5, "count": 3}
    bad = [{"mean": 1.0, "variance": 0.5, "count": 1e400}, {"mean": "NaN", "variance": 1, "count": 1},
           {"mean": 1.0, "variance": -1.0, "count": 1}, {"mean": True, "variance": 1.0, "count": 1},
           {"mean": 1.0, "variance": 1.0, "count": 0}, {"mean": 1.0, "variance": 1.0, "count": 2.5},
           [1, 2, 3], None, "x", {"mean": 1.0}]  # fmt: skip
    body = json.dumps({"format": 1, "momentum": 0.9, "namespaces": {"good": good}})
    entries = ", ".join(f'"bad-{i}": {json.dumps(entry)}' for i, entry in enumerate(bad))
    body = body[:-2] + ", " + entries + ', "nan": {"mean": NaN, "variance": 1, "count": 1}}}'
    path = tmp_path / "s.json"
    path.write_text(body.replace('"count": Infinity', '"count": 1e400'))
    restored = RunningStats(0.9, 1e-6, 8)
    assert restored.restore(path)
    assert restored.get("good") == EmaStats(1.0, 0.5, 3) and len(restored) == 1


def test_snapshot_round_trips_and_skips_corrupt_namespaces(tmp_path: Path) -> None:
    stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=8)
    stats.normalize("a", [1.0, 2.0, 4.0])
    path = tmp_path / "state" / "stats.json"
    write_snapshot(path, stats.to_dict())
    snapshot = json.loads(path.read_text())
    snapshot["namespaces"]["bad"] = {"mean": "nan", "variance": 1.0, "count": 1}
    path.write_text(json.dumps(snapshot))
    restored = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=8)
    assert restored.restore(path)
    assert restored.get("a") == stats.get("a") and restored.get("bad") is None
    assert not RunningStats(0.9, 1e-6, 8).restore(tmp_path / "missing.json")
