"""The benchmark's own arithmetic: server-like batches and the figures it reads from /metrics."""

from __future__ import annotations

import json
import os
import time

import pytest

from app.config import AUTO_BATCH_TOKENS
from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    with load_script("bench_serve") as module:
        yield module


@pytest.mark.parametrize("packed", [False, True])
def test_server_like_batches_cut_each_pool_within_the_cpu_token_budget(bench, packed: bool) -> None:
    pairs = [{"prompt": "p", "response": "r", "n": i} for i in range(100)]
    tokens = [(37 * i) % 126 + 3 for i in range(100)]  # exact lengths, as the backend encodes them
    pool = 32
    batches = bench.server_like_batches(pairs, tokens, pool, seed=3, packed=packed)
    flat = [id(p) for batch in batches for p in batch]
    assert sorted(flat) == sorted(map(id, pairs))  # every pair exactly once
    shuffled = bench.random.Random(3).sample(range(len(pairs)), len(pairs))
    pool_of = {id(pairs[i]): index // pool for index, i in enumerate(shuffled)}
    arrival = {id(pairs[i]): index for index, i in enumerate(shuffled)}
    for batch in batches:
        assert len({pool_of[id(p)] for p in batch}) == 1  # a batch never reaches beyond its pool
        lengths = [tokens[p["n"]] for p in batch]
        cost = sum(lengths) if packed else len(batch) * max(lengths)
        assert len(batch) == 1 or cost <= AUTO_BATCH_TOKENS["cpu"]
        if packed:  # packed inputs keep the order they arrived in
            assert [arrival[id(p)] for p in batch] == sorted(arrival[id(p)] for p in batch)
        else:  # padded ones are sorted by length, as the server sorts them
            assert lengths == sorted(lengths)
    assert len(batches) > -(-len(pairs) // pool)  # the token budget cut some pools more than once


def test_batching_figures_come_from_the_counters_deltas(bench) -> None:
    before = {
        "reward_forward_duration_seconds_sum": 2.0,
        "reward_batch_size_sum": 100.0,
        "reward_batch_size_count": 10.0,
        "reward_compute_workers": 1.0,
    }
    after = {
        "reward_forward_duration_seconds_sum": 11.0,
        "reward_batch_size_sum": 400.0,
        "reward_batch_size_count": 30.0,
        "reward_compute_workers": 1.0,
    }
    assert bench.batching_figures(before, after, 10.0) == {"compute_busy": 0.9, "mean_batch": 15.0}
    two = {**after, "reward_compute_workers": 2.0}  # two workers: 9 s of batches in 10 s is 0.45 each
    assert bench.batching_figures(before, two, 10.0) == {"compute_busy": 0.45, "mean_batch": 15.0}
    assert bench.batching_figures(None, after, 10.0) == {}  # a server without /metrics (naive)


def test_main_thread_cpu_grows_with_work_and_is_none_for_a_missing_process(bench) -> None:
    before = bench.main_thread_cpu_s(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn CPU on this (the main) thread
        pass
    after = bench.main_thread_cpu_s(os.getpid())
    assert before is not None and after is not None and after - before >= 0.1
    assert bench.main_thread_cpu_s(2**22 + 1) is None  # above Linux's pid_max


def test_compare_forward_times_both_forwards_for_every_batch_size_and_order(bench, tiny_model_store, capsys):
    bench.main([
        "--compare-forward", "1", "--model-store", str(tiny_model_store), "--dtype", "float32",
        "--ceiling-batch-sizes", "1", "3", "--pairs", "6", "--threads", "1",
    ])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    cases = {(r["batch"], r["order"], r["forward"]) for r in report["rows"]}
    batches = ((1, "random"), (3, "random"), (3, "sorted"))
    assert cases == {(size, order, forward) for size, order in batches for forward in ("packed", "padded")}
    assert all(
        r["items_per_s"] > 0 and r["ms_per_batch"] > 0 and r["dtype"] == "float32" for r in report["rows"]
    )
    assert report["cpu"] and report["threads"] == 1


def test_drive_reports_the_median_latency_of_each_quarter_of_the_pairs_by_length(bench, server_url) -> None:
    pairs = [{"prompt": "q " * (1 + 5 * i), "response": "a " * (1 + 3 * i)} for i in range(8)]
    figures = bench.asyncio.run(bench.drive(server_url, "score", 2, 1.0, pairs, batch_items=4))
    assert figures["requests"] > 8 and figures["errors"] == 0  # every pair was sent at least once
    quarters = figures["p50_ms_by_length_quarter"]
    assert len(quarters) == 4 and all(0 < q < 60_000 for q in quarters)
    assert 0 < figures["client_ms_per_request"] < 1000  # the load generator's own CPU, per request
    batch = bench.asyncio.run(bench.drive(server_url, "score_batch", 1, 0.3, pairs, batch_items=4))
    assert batch["requests"] > 0 and batch["p50_ms_by_length_quarter"] is None  # items of mixed lengths


def test_the_ceiling_bracketing_the_served_runs_is_the_mean_of_both_measurements(bench) -> None:
    def ceiling(scale: float) -> dict:
        return {
            "best_items_per_s": 100.0 * scale, "best_batch_size": 16, "mean_tokens": 80.0,
            "items_per_s_by_batch_size": {1: 40.0 * scale, 16: 100.0 * scale},
            "items_per_s_by_pool": {64: 90.0 * scale}, "items_per_s_largest_pool_with_python_load": None,
        }  # fmt: skip

    both = bench.bracketed(ceiling(1.0), ceiling(2.0))
    assert both["best_items_per_s"] == pytest.approx(150.0) and both["best_batch_size"] == 16
    assert both["items_per_s_by_batch_size"] == {1: pytest.approx(60.0), 16: pytest.approx(150.0)}
    assert both["items_per_s_by_pool"] == {64: pytest.approx(135.0)}
    assert both["best_items_per_s_before_and_after"] == [100.0, 200.0] and both["mean_tokens"] == 80.0
    slower_at_16 = {**ceiling(1.0), "items_per_s_by_batch_size": {1: 120.0, 16: 100.0}}
    assert bench.bracketed(slower_at_16, slower_at_16)["best_batch_size"] == 1  # the best of the means


def test_a_benchmark_run_measures_the_ceiling_before_and_after_the_server(
    bench, tiny_model_store, tmp_path, capsys
) -> None:
    out = tmp_path / "report.json"
    bench.main([
        "--model-store", str(tiny_model_store), "--servers", "batched", "--endpoints", "score",
        "--concurrency", "2", "--duration", "0.5", "--pairs", "6", "--threads", "1", "--dtype", "float32",
        "--path", "torch", "--ceiling-batch-sizes", "1", "2", "--ceiling-pools", "4", "--json", str(out),
    ])  # fmt: skip
    report = json.loads(out.read_text())
    before, after = report["ceiling"]["best_items_per_s_before_and_after"]
    assert before > 0 and after > 0
    by_size = report["ceiling"]["items_per_s_by_batch_size"]
    assert report["ceiling"]["best_items_per_s"] == pytest.approx(max(by_size.values()))
    assert report["results"][0]["items_per_s"] > 0 and report["results"][0]["errors"] == 0
    assert "measured before the servers ran" in capsys.readouterr().out


def test_the_ceiling_of_a_pool_of_workers_is_the_better_of_alone_and_side_by_side(
    bench, tiny_model_store, capsys
) -> None:
    bench.main([
        "--model-store", str(tiny_model_store), "--ceiling-only", "--pairs", "16", "--threads", "2",
        "--workers", "2", "--dtype", "float32", "--path", "torch", "--ceiling-batch-sizes", "1", "4",
        "--ceiling-pools",
    ])  # fmt: skip
    ceiling = json.loads(capsys.readouterr().out)
    alone, side = ceiling["one_at_a_time_by_batch_size"], ceiling["side_by_side_by_batch_size"]
    assert ceiling["workers"] == 2 and set(alone) == set(side) == {"1", "4"}
    for size, rate in ceiling["items_per_s_by_batch_size"].items():
        assert rate == max(alone[size], side[size]) > 0
    assert ceiling["best_items_per_s"] == max(ceiling["items_per_s_by_batch_size"].values())
