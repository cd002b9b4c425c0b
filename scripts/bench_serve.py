"""Benchmark the reward service: served throughput and latency vs the model's in-process ceiling.

For each concurrency level, closed-loop clients (each sends its next request when the previous one is
answered) run for `--duration` seconds against /score (1 item per request) and /score_batch
(`--batch-items` items), with batching on (the server's settings) and off (REWARD_MAX_BATCH_SIZE=1),
optionally against a naive one-request-one-forward FastAPI server of the same model in the same dtype.
The ceiling is the best batched forward throughput of the same model on the same inputs, tokenization
included, in this process with the servers' threads and dtype, measured before and after the servers run
(the mean of the two: shared cores drift in speed over minutes); next to it, batches cut by the server's
own code from N pending items (`--ceiling-pools`), optionally while a thread runs Python
(`--python-load`). Each cell also reads the compute pool's busy share and the mean batch size from
the service's /metrics, and the event loop's (main thread's) CPU per request from /proc. Prints a
markdown table; `--json` writes every figure (machine, model, server RSS), `--plot` draws throughput
and latency against concurrency.

    python scripts/bench_serve.py --concurrency 1 8 64 256 --naive --plot docs/bench_serve.png
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --concurrency 64   # an already running server

The clients are a minimal HTTP/1.1 keep-alive client on asyncio streams (requests encoded once): a
general-purpose client such as httpx costs about 5 ms of CPU per request, which on a small machine
would take a third of the cores away from the server being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import torch

from app.backends.devices import configure_torch_threads, resolve_device, resolve_dtype, set_thread_threads
from app.backends.warmup import forward_raw
from app.batcher import BatchPolicy, cut_payloads
from app.compute import ComputePool
from app.config import Settings, batch_tokens, default_of
from app.errors import CheckpointError
from app.loadgen import (
    Connections,
    app_command,
    encode_request,
    percentile,
    rss_mib,
    run_clients,
    serving,
)
from app.registry import ModelRegistry
from app.schemas import ScoreRequest
from app.store import LoadedVersion, read_current

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "data" / "hh_harmless_sample.jsonl"
# input mixes: data file and the fewest characters of prompt + response a pair must have (long answers
# of AlpacaEval fill the default model's 128 tokens: ~4 characters per token)
MIXES = {"hh": (DEFAULT_DATA, 0), "long": (REPO / "data" / "alpaca_eval_sample.jsonl", 700)}


@dataclass
class Result:
    server: str  # batched, unbatched, naive, or the given URL
    endpoint: str  # score or score_batch
    concurrency: int
    requests: int
    errors: int
    req_per_s: float
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_rss_mib: float | None = None  # after this measurement
    compute_busy: float | None = None  # share of the run the compute pool's workers spent on batches
    mean_batch: float | None = None  # items per micro-batch during the run (/metrics)
    loop_ms_per_request: float | None = None  # CPU of the server's main thread (event loop) per request
    client_ms_per_request: float | None = None  # CPU of this load generator per request (same machine)
    # /score: p50 latency of the requests in each quarter of the pairs by length (characters), shortest
    # first; even figures mean no length waits longer than another
    p50_ms_by_length_quarter: list[float] | None = None


def opener_of(path: Path) -> Callable:
    return gzip.open if path.suffix == ".gz" else open


def load_pairs(path: Path | None, count: int, seed: int, min_chars: int = 0) -> list[dict]:
    """Real (prompt, response) pairs when the data file exists (at least `min_chars` characters
    together), else deterministic synthetic ones."""
    rng = random.Random(seed)
    if path is not None and path.is_file():
        with opener_of(path)(path, "rt") as f:
            records = [json.loads(line) for line in f if line.strip()]
        rng.shuffle(records)
        pairs = [{"prompt": r["prompt"], "response": r[rng.choice(("chosen", "rejected"))]} for r in records]
        return [p for p in pairs if len(p["prompt"]) + len(p["response"]) >= min_chars][:count]
    words = str.split("the reward model scores helpful honest answers about water eggs code travel and music")
    return [
        {
            "prompt": " ".join(rng.choices(words, k=rng.randint(5, 80))),
            "response": " ".join(rng.choices(words, k=30)),
        }
        for _ in range(count)
    ]


# ---------------------------------------------------------------- load generator


def milliseconds(seconds: float | None) -> float:
    return float("nan") if seconds is None else 1000 * seconds


async def drive(
    url: str, endpoint: str, concurrency: int, duration: float, pairs: list[dict], batch_items: int
) -> dict:
    """`concurrency` closed-loop clients on keep-alive connections for `duration` seconds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    def body(i: int) -> dict:
        if endpoint == "score":
            return pairs[i % len(pairs)]
        start = (i * batch_items) % len(pairs)
        return {"items": [pairs[(start + k) % len(pairs)] for k in range(batch_items)]}

    variants = len(pairs) if endpoint == "score" else max(1, len(pairs) // batch_items)
    requests = [encode_request(f"{host}:{port}", f"/{endpoint}", body(i)) for i in range(variants)]
    latencies: list[float] = []
    by_variant: list[list[float]] = [[] for _ in requests]  # latencies of each request body
    errors = 0
    deadline = time.perf_counter() + duration

    async def client_loop(worker: int) -> None:
        nonlocal errors
        i, connections = worker, Connections(url)  # one keep-alive connection per client
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status, _ = await connections.send(requests[i % len(requests)], timeout_s=120)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    errors += 1
                    await asyncio.sleep(0.05)  # a refused connection is not retried in a busy loop
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                    by_variant[i % len(requests)].append(latencies[-1])
                else:
                    errors += 1
                i += concurrency
        finally:
            connections.close()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client_loop(w) for w in range(concurrency)))
    elapsed, client_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    per_request = 1 if endpoint == "score" else batch_items
    quarters = None
    if endpoint == "score":
        by_length = sorted(
            range(len(pairs)), key=lambda i: len(pairs[i]["prompt"]) + len(pairs[i]["response"])
        )
        quarters = [
            milliseconds(percentile([t for i in part for t in by_variant[i]], 0.50))
            for part in (by_length[q * len(pairs) // 4 : (q + 1) * len(pairs) // 4] for q in range(4))
        ]
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / elapsed,
        "items_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": milliseconds(percentile(latencies, 0.50)),
        "p90_ms": milliseconds(percentile(latencies, 0.90)),
        "p99_ms": milliseconds(percentile(latencies, 0.99)),
        "p50_ms_by_length_quarter": quarters,
        "client_ms_per_request": 1000 * client_cpu / len(latencies) if latencies else None,
    }


# ---------------------------------------------------------------- servers


def main_thread_cpu_s(pid: int) -> float | None:
    """CPU seconds used so far by the process's main thread (the server's event loop), from /proc."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return None


def naive_command(store: Path, threads: int, dtype: str, path: str) -> list[str]:
    return [
        sys.executable, __file__, "--serve-naive", "--model-store", str(store), "--threads", str(threads),
        "--dtype", dtype, "--path", path,
    ]  # fmt: skip


def load_live(store: Path, dtype: str, path: str = "auto") -> LoadedVersion:
    """The store's CURRENT version as the server loads it: on its device, in `dtype`, on the execution
    path `path` (auto: measured on this machine among the candidates, as REWARD_DTYPE=auto does)."""
    if read_current(store) is None:
        raise SystemExit(f"{store}: no CURRENT version to benchmark")
    registry = ModelRegistry(store, "auto", dtype, path)
    try:
        return registry.load()
    finally:
        registry.close()


def serve_naive(store: Path, port: int, threads: int, dtype: str, path: str) -> None:
    """A naive server: one request, one forward pass, no queue, no batching."""
    import uvicorn
    from fastapi import FastAPI

    torch.set_num_threads(threads)
    version = load_live(store, dtype, path)
    app = FastAPI()

    @app.get("/readyz")
    def read_readiness() -> dict:
        return {"status": "ready"}

    @app.post("/score")
    def score_pair(body: dict) -> dict:
        return {"reward": forward_raw(version, [body["prompt"]], [body["response"]])[0]}

    @app.post("/score_batch")
    def score_batch(body: dict) -> dict:
        items = body["items"]
        return {"rewards": forward_raw(version, [i["prompt"] for i in items], [i["response"] for i in items])}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------- ceiling


def server_like_batches(
    pairs: list[dict], lengths: list[int], pool: int, seed: int, packed: bool
) -> list[list[dict]]:
    """`pairs` (of exact token `lengths`) in random order, taken `pool` at a time (the items pending
    together in a server) and cut by the server's own code and default CPU limits (`packed`: as for a
    backend that packs its inputs): what its batches look like at that load."""
    policy = BatchPolicy(max_batch_tokens=batch_tokens(default_of("max_batch_tokens"), "cpu"))
    order = random.Random(seed).sample(range(len(pairs)), len(pairs))
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        batches += cut_payloads([pairs[i] for i in chunk], [lengths[i] for i in chunk], policy, packed)
    return batches


def forward_batch(version: LoadedVersion, batch: list[dict]) -> None:
    forward_raw(version, [p["prompt"] for p in batch], [p["response"] for p in batch])


def best_rate(version: LoadedVersion, batches: list[list[dict]], passes: int = 2) -> float:
    """Best items/s of forward_raw over `batches`, one after the other, in `passes` passes."""
    items, best = sum(map(len, batches)), 0.0
    for _ in range(passes):
        started = time.perf_counter()
        for batch in batches:
            forward_batch(version, batch)
        best = max(best, items / (time.perf_counter() - started))
    return best


def best_rate_side_by_side(
    version: LoadedVersion, batches: list[list[dict]], pool: ComputePool, passes: int = 2
) -> float:
    """Best items/s of `batches` handed to the compute pool all at once, so its workers run them side by
    side with their share of the threads as the server's do under load, in `passes` passes."""
    items, best = sum(map(len, batches)), 0.0
    for _ in range(passes):
        started = time.perf_counter()
        for future in pool.submit_batches(functools.partial(forward_batch, version), batches):
            future.result()
        best = max(best, items / (time.perf_counter() - started))
    return best


@contextlib.contextmanager
def python_load(duty: float, period_s: float = 0.004) -> Iterator[None]:
    """A thread that runs Python (JSON + request validation, the event loop's kind of work) for `duty`
    of every `period_s` and sleeps the rest: what a server's HTTP side does to its forward passes."""
    stop = threading.Event()
    body = json.dumps({"prompt": "How do I bake bread?", "response": "Mix flour, water, salt and yeast."})

    def work() -> None:
        while not stop.is_set():
            until = time.perf_counter() + duty * period_s
            while time.perf_counter() < until:
                ScoreRequest.model_validate_json(body)
            time.sleep((1 - duty) * period_s)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def in_process_ceiling(
    version: LoadedVersion,
    pairs: list[dict],
    batch_sizes: list[int],
    pools: list[int],
    seed: int,
    python_duty: float = 0.0,
    repeats: int = 1,
    pool: ComputePool | None = None,
) -> dict:
    """Items/s of forward_raw (tokenize, pad, forward) over length-sorted `pairs`, per batch size; over
    batches cut as the server cuts them from `pools` pending items (CPU limits); and over those of the
    largest pool while another thread runs Python `python_duty` of the time. Every torch call runs on
    `pool` as the server's do: one batch at a time with all the threads, and, when the pool has more than
    one worker, the same batches side by side on its workers; the better of the two is the figure (the
    one-at-a-time figures are kept apart: a lone request's latency). Each figure is the best of two
    passes; with `repeats` > 1 all cases are measured in turn that often and the median is kept, so a
    slow spell of a shared machine does not fall on one case only."""
    own_pool = pool is None
    pool = pool or ComputePool()
    try:
        return ceiling_on(version, pairs, batch_sizes, pools, seed, python_duty, repeats, pool)
    finally:
        if own_pool:
            pool.close()


def ceiling_on(
    version: LoadedVersion,
    pairs: list[dict],
    batch_sizes: list[int],
    pools: list[int],
    seed: int,
    python_duty: float,
    repeats: int,
    pool: ComputePool,
) -> dict:
    """in_process_ceiling on `pool`."""
    encoded = version.backend.encode([p["prompt"] for p in pairs], [p["response"] for p in pairs])
    lengths = [len(ids) for ids in encoded]
    by_length = [pairs[i] for i in sorted(range(len(pairs)), key=lengths.__getitem__)]  # as the server sorts
    cases: dict[tuple[str, int], tuple[list[list[dict]], float]] = {}
    for size in batch_sizes:
        cases["size", size] = ([by_length[s : s + size] for s in range(0, len(pairs), size)], 0.0)
    packed = version.backend.packs_inputs
    for n in pools:
        cases["pool", n] = (server_like_batches(pairs, lengths, n, seed, packed), 0.0)
    if python_duty and pools:
        cases["loaded", max(pools)] = (
            server_like_batches(pairs, lengths, max(pools), seed, packed),
            python_duty,
        )
    pool.submit(forward_batch, version, by_length[:8]).result()  # warm-up
    side = pool.workers > 1
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in cases}
    rates_side: dict[tuple[str, int], list[float]] = {key: [] for key in cases}
    for _ in range(repeats):
        for key, (batches, duty) in cases.items():
            with python_load(duty) if duty else contextlib.nullcontext():
                rates[key].append(pool.submit(best_rate, version, batches).result())
                if side:
                    rates_side[key].append(best_rate_side_by_side(version, batches, pool))
    one = {key: statistics.median(values) for key, values in rates.items()}
    both = {key: max(one[key], statistics.median(rates_side[key])) if side else one[key] for key in cases}
    per_size = {n: both["size", n] for n in batch_sizes}
    top = max(per_size, key=per_size.get)
    return {
        "best_items_per_s": per_size[top],
        "best_batch_size": top,
        "items_per_s_by_batch_size": per_size,
        "items_per_s_by_pool": {n: both["pool", n] for n in pools},
        "python_duty": python_duty,
        "items_per_s_largest_pool_with_python_load": both.get(("loaded", max(pools, default=0))),
        "workers": pool.workers,
        "one_at_a_time_by_batch_size": {n: one["size", n] for n in batch_sizes},
        "side_by_side_by_batch_size": (
            {n: statistics.median(rates_side["size", n]) for n in batch_sizes} if side else None
        ),
        "repeats": repeats,
        "mean_tokens": sum(lengths) / len(lengths),
        "max_len": version.backend.max_len,
    }


def measure_ceiling(
    version: LoadedVersion, pairs: list[dict], args: argparse.Namespace, pool: ComputePool
) -> dict:
    ceiling = in_process_ceiling(
        version, pairs, args.ceiling_batch_sizes, args.ceiling_pools, args.seed, args.python_load,
        args.ceiling_repeats, pool,
    )  # fmt: skip
    print(f"  ceiling {ceiling['best_items_per_s']:.1f} items/s", file=sys.stderr, flush=True)
    return ceiling


def bracketed(before: dict, after: dict) -> dict:
    """The ceiling measured before and after the servers' runs, each figure the mean of the two. The
    speed of shared virtual cores drifts over minutes (up to twofold here); the served runs fall between
    the two measurements, so their mean is the ceiling of about the same minutes."""

    def mean(key: str) -> dict:
        return {k: (v + after[key][k]) / 2 for k, v in before[key].items()}

    def mean_or_none(key: str) -> dict | None:
        return None if before.get(key) is None else mean(key)

    per_size, loaded = mean("items_per_s_by_batch_size"), before["items_per_s_largest_pool_with_python_load"]
    top = max(per_size, key=per_size.get)
    return {
        **before,
        "best_items_per_s": per_size[top],
        "best_batch_size": top,
        "items_per_s_by_batch_size": per_size,
        "items_per_s_by_pool": mean("items_per_s_by_pool"),
        "items_per_s_largest_pool_with_python_load": (
            None if loaded is None else (loaded + after["items_per_s_largest_pool_with_python_load"]) / 2
        ),
        "one_at_a_time_by_batch_size": mean_or_none("one_at_a_time_by_batch_size"),
        "side_by_side_by_batch_size": mean_or_none("side_by_side_by_batch_size"),
        "best_items_per_s_before_and_after": [before["best_items_per_s"], after["best_items_per_s"]],
    }


def compare_with_float32(store: Path, data: Path, dtype: str, count: int, seed: int) -> dict:
    """Rewards of chosen and rejected answers in `dtype` vs float32, as the server prepares the model:
    absolute differences, preference orderings flipped, distinct values, batch vs alone."""
    with opener_of(data)(data, "rt") as f:
        records = [json.loads(line) for line in f if line.strip()]
    random.Random(seed).shuffle(records)
    records = records[:count]
    prompts = [r["prompt"] for r in records] * 2
    responses = [r["chosen"] for r in records] + [r["rejected"] for r in records]

    def rewards(version: LoadedVersion, batch: int) -> list[float]:
        spans = range(0, len(prompts), batch)
        return [
            x for s in spans for x in forward_raw(version, prompts[s : s + batch], responses[s : s + batch])
        ]

    reference = rewards(load_live(store, "float32", "torch"), 16)
    candidate = load_live(store, dtype)
    batched, alone = rewards(candidate, 16), rewards(candidate, 1)
    diffs = sorted(abs(a - b) for a, b in zip(batched, reference, strict=True))
    n = len(records)
    return {
        "dtype": str(resolve_dtype(dtype, resolve_device("auto"))),
        "texts": len(diffs),
        "abs_diff_p50": percentile(diffs, 0.5),
        "abs_diff_p99": percentile(diffs, 0.99),
        "abs_diff_max": diffs[-1],
        "preferences_flipped": sum(
            (reference[i] > reference[i + n]) != (batched[i] > batched[i + n]) for i in range(n)
        ),
        "pairs": n,
        "distinct_rewards": len(set(batched)),
        "batch_vs_alone_max": max(abs(a - b) for a, b in zip(batched, alone, strict=True)),
    }


# execution paths of --compare-paths: (REWARD_DTYPE, REWARD_EXECUTION_PATH) forcing each one
FORCED_PATHS = {
    "float32": ("float32", "torch"), "bfloat16": ("bfloat16", "torch"), "onnx": ("auto", "onnx"),
    "onnx-int8": ("auto", "onnx-int8"),
}  # fmt: skip


def compare_paths(store: Path, pairs: list[dict], batch_sizes: list[int], rounds: int) -> dict:
    """Items/s of every execution path, loaded as the server loads it, on `pairs` in batches of each
    size (sorted by characters): all paths timed in turn `rounds` times (medians), so that a slow spell of a
    shared machine falls on all of them; with the largest deviation from float32 on these inputs."""
    loaded, refused = {}, {}
    for name, (dtype, path) in FORCED_PATHS.items():
        try:
            loaded[name] = load_live(store, dtype, path)
        except CheckpointError as exc:  # a forced path that fails the accuracy guard
            refused[name] = str(exc)
    pairs = sorted(pairs, key=lambda p: len(p["prompt"]) + len(p["response"]))
    prompts, responses = [p["prompt"] for p in pairs], [p["response"] for p in pairs]
    reference = forward_raw(loaded["float32"], prompts, responses)
    std = loaded["float32"].calibration[1]
    figures = {name: {"max_deviation_std": max(
        abs(a - b) for a, b in zip(forward_raw(v, prompts, responses), reference, strict=True)) / std}
        for name, v in loaded.items()}  # fmt: skip
    for size in batch_sizes:
        batches = [pairs[s : s + size] for s in range(0, len(pairs), size)]
        rates: dict[str, list[float]] = {name: [] for name in loaded}
        for _ in range(rounds):
            for name, version in loaded.items():
                rates[name].append(best_rate(version, batches, passes=1))
        for name, values in rates.items():
            figures[name][f"items_per_s_batch_{size}"] = statistics.median(values)
    return {"paths": figures, "refused": refused, "rounds": rounds}


def time_batches(forward: Callable, batches: list[list[list[int]]]) -> tuple[float, float]:
    """Median milliseconds per batch and items/s over one pass of encoded `batches`."""
    times = []
    with torch.inference_mode():
        for batch in batches:
            started = time.perf_counter()
            forward(batch)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, sum(map(len, batches)) / sum(times)


def compare_forwards(store: Path, pairs: list[dict], dtype: str, sizes: list[int], rounds: int, seed: int):
    """The CPU forward the service runs (inputs packed, `RewardModel.forward_packed`) against the model's
    padded forward (torch's nested-tensor fast path) on the same batches: pairs in a random order (as a
    server meets them) and, for batches of more than one, sorted by length (the ceiling's batches); both
    timed in turn `rounds` times, medians."""
    version = load_live(store, dtype, "torch")
    backend = version.backend
    ids = backend.encode([p["prompt"] for p in pairs], [p["response"] for p in pairs])
    random.Random(seed).shuffle(ids)

    def padded(batch: list[list[int]]) -> None:
        backend.model(*backend.tokenizer.pad(sorted(batch, key=len)))

    forwards = {"packed": backend.forward, "padded": padded}
    rows = []
    for size in sizes:
        orders = {"random": ids} | ({"sorted": sorted(ids, key=len)} if size > 1 else {})
        for order, items in orders.items():
            batches = [items[i : i + size] for i in range(0, len(items), size)]
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in forwards}
            for _ in range(rounds):
                for name, forward in forwards.items():
                    figures[name].append(time_batches(forward, batches))
            rows += [{
                "dtype": dtype, "batch": size, "order": order, "forward": name,
                "ms_per_batch": statistics.median(v[0] for v in values),
                "items_per_s": statistics.median(v[1] for v in values),
            } for name, values in figures.items()]  # fmt: skip
    return rows


# ---------------------------------------------------------------- the run


SCRAPED = (
    "reward_forward_duration_seconds_sum", "reward_batch_size_sum", "reward_batch_size_count",
    "reward_compute_workers",
)  # fmt: skip


def scrape(url: str) -> dict[str, float] | None:
    """The batching counters of the service's /metrics; None for a server without them (naive)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SCRAPED:
            values[name] = float(value)
    return values if len(values) == len(SCRAPED) else None


def batching_figures(before: dict | None, after: dict | None, seconds: float) -> dict:
    """Compute pool busy share (of all its workers' time) and mean batch size between two scrapes."""
    if before is None or after is None:
        return {}
    delta = {name: after[name] - before[name] for name in SCRAPED}
    batches = delta["reward_batch_size_count"]
    return {
        "compute_busy": (
            delta["reward_forward_duration_seconds_sum"] / seconds / after["reward_compute_workers"]
        ),
        "mean_batch": delta["reward_batch_size_sum"] / batches if batches else None,
    }


def run_matrix(
    name: str, url: str, pid: int | None, args: argparse.Namespace, pairs: list[dict]
) -> list[Result]:
    results = []
    for endpoint in args.endpoints:
        for concurrency in args.concurrency:
            before, started = scrape(url), time.perf_counter()
            loop_before = main_thread_cpu_s(pid) if pid else None
            figures = run_clients(drive(url, endpoint, concurrency, args.duration, pairs, args.batch_items))
            elapsed = time.perf_counter() - started
            result = Result(name, endpoint, concurrency, **figures)
            result.server_rss_mib = rss_mib(pid) if pid else None
            loop_after = main_thread_cpu_s(pid) if pid else None
            if loop_before is not None and loop_after is not None and result.requests:
                result.loop_ms_per_request = 1000 * (loop_after - loop_before) / result.requests
            for key, value in batching_figures(before, scrape(url), elapsed).items():
                setattr(result, key, value)
            results.append(result)
            quarters = result.p50_ms_by_length_quarter
            print(
                f"  {name:10s} {endpoint:11s} c={concurrency:<4d} {result.items_per_s:9.1f} items/s  "
                f"p50 {result.p50_ms:8.1f} ms  p99 {result.p99_ms:8.1f} ms  errors {result.errors}"
                + (
                    f"  p50 by length quarter {'/'.join(f'{q:.0f}' for q in quarters)} ms" if quarters else ""
                ),
                file=sys.stderr,
                flush=True,
            )
    return results


def benchmark_started_servers(args: argparse.Namespace, pairs: list[dict]) -> list[Result]:
    env = {
        "REWARD_TORCH_THREADS": str(args.threads),
        "REWARD_COMPUTE_WORKERS": str(args.workers_setting),  # 0: the service's auto count and layout
        "REWARD_DTYPE": args.dtype,
        "REWARD_EXECUTION_PATH": args.path,
        "REWARD_QUEUE_SIZE": "100000",
        "REWARD_MAX_QUEUE_WAIT_S": "0",  # measure throughput, not admission control
        "REWARD_RELOAD_INTERVAL": "0",
    }
    variants = {"batched": {}, "unbatched": {"REWARD_MAX_BATCH_SIZE": "1"}}
    results = []
    for name, extra in variants.items():
        if name in args.servers:
            command = app_command(args.model_store, "--stats-path", "")
            with serving(command, {**env, **extra}, ready_timeout_s=180) as (url, process):
                results += run_matrix(name, url, process.pid, args, pairs)
    if "naive" in args.servers:
        naive_env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}  # as the service sets it, for a fair RSS
        command = naive_command(args.model_store, args.threads, args.dtype, args.path)
        with serving(command, naive_env, ready_timeout_s=180) as (url, process):
            results += run_matrix("naive", url, process.pid, args, pairs)
    return results


def markdown(results: list[Result], ceiling: dict | None, facts: dict) -> str:
    lines = [
        f"CPU: {facts['cpu']} ({facts['cpus']} cores), {facts['torch_threads']} torch threads, "
        f"path {facts.get('execution', facts['dtype'])}, inputs {facts['data']}\n",
        "| server | endpoint | clients | req/s | items/s | p50 ms | p90 ms | p99 ms | errors | RSS MiB "
        "| loop ms/req | client ms/req | busy | batch | of ceiling |",
        "| --- | --- |" + " ---: |" * 13,
    ]
    for r in results:
        share = f"{r.items_per_s / ceiling['best_items_per_s']:.2f}" if ceiling else "-"
        rss = f"{r.server_rss_mib:.0f}" if r.server_rss_mib else "-"
        busy = f"{r.compute_busy:.2f}" if r.compute_busy is not None else "-"
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        loop = f"{r.loop_ms_per_request:.2f}" if r.loop_ms_per_request is not None else "-"
        client = f"{r.client_ms_per_request:.2f}" if r.client_ms_per_request is not None else "-"
        lines.append(
            f"| {r.server} | /{r.endpoint} | {r.concurrency} | {r.req_per_s:.1f} | {r.items_per_s:.1f} | "
            f"{r.p50_ms:.0f} | {r.p90_ms:.0f} | {r.p99_ms:.0f} | {r.errors} | {rss} | {loop} | {client} "
            f"| {busy} | {batch} | {share} |"
        )
    if ceiling:
        by_size = ", ".join(f"{k}: {v:.1f}" for k, v in ceiling["items_per_s_by_batch_size"].items())
        lines.append(
            f"\nIn-process ceiling: {ceiling['best_items_per_s']:.1f} items/s at batch size "
            f"{ceiling['best_batch_size']} (items/s by batch size: {by_size}; tokenization included; "
            f"mean {ceiling['mean_tokens']:.0f} tokens per pair)."
        )
    if ceiling and ceiling.get("side_by_side_by_batch_size"):
        one = ", ".join(f"{k}: {v:.1f}" for k, v in ceiling["one_at_a_time_by_batch_size"].items())
        side = ", ".join(f"{k}: {v:.1f}" for k, v in ceiling["side_by_side_by_batch_size"].items())
        lines.append(
            f"Each figure is the better of one batch at a time with all {facts['torch_threads']} threads "
            f"({one}) and batches side by side on {ceiling['workers']} workers, as the server runs them "
            f"under load ({side})."
        )
    if ceiling and ceiling.get("items_per_s_by_pool"):
        by_pool = ", ".join(f"{k}: {v:.1f}" for k, v in ceiling["items_per_s_by_pool"].items())
        lines.append(
            f"In-process, batches cut as the server cuts them from N pending items (items/s by N): {by_pool}."
        )
    if ceiling and ceiling.get("items_per_s_largest_pool_with_python_load"):
        lines.append(
            f"The same, largest pool, with a thread running Python {ceiling['python_duty']:.0%} of the time: "
            f"{ceiling['items_per_s_largest_pool_with_python_load']:.1f} items/s."
        )
    if ceiling and ceiling.get("best_items_per_s_before_and_after"):
        first, last = ceiling["best_items_per_s_before_and_after"]
        lines.append(
            f"The ceiling was measured before the servers ran ({first:.1f} items/s at its best) and after "
            f"({last:.1f}); every in-process figure is the mean of the two."
        )
    if ceiling and ceiling.get("repeats", 1) > 1:
        lines.append(f"Each in-process figure is the median of {ceiling['repeats']} runs taken in turn.")
    return "\n".join(lines)


def plot(results: list[Result], ceiling: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = sorted({r.endpoint for r in results})
    fig, axes = plt.subplots(2, len(endpoints), figsize=(6 * len(endpoints), 8), squeeze=False)
    for column, endpoint in enumerate(endpoints):
        top, bottom = axes[0][column], axes[1][column]
        for server in dict.fromkeys(r.server for r in results):
            rows = [r for r in results if r.server == server and r.endpoint == endpoint]
            clients = [r.concurrency for r in rows]
            (line,) = top.plot(clients, [r.items_per_s for r in rows], marker="o", label=server)
            color = line.get_color()
            bottom.plot(clients, [r.p50_ms for r in rows], marker="o", color=color, label=f"{server} p50")
            p99 = [r.p99_ms for r in rows]
            bottom.plot(clients, p99, marker="x", linestyle="--", color=color, label=f"{server} p99")
        if ceiling:
            top.axhline(ceiling["best_items_per_s"], color="black", linestyle=":", label="in-process ceiling")
        top.set(title=f"/{endpoint}: throughput", xscale="log", xlabel="concurrent clients", ylabel="items/s")
        bottom.set(title=f"/{endpoint}: latency", xscale="log", yscale="log", xlabel="concurrent clients",
                   ylabel="ms")  # fmt: skip
        top.legend(fontsize=8)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_facts(args: argparse.Namespace, version: LoadedVersion | None, pair_count: int) -> dict:
    facts = {
        "platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": args.threads, "compute_workers": args.workers, "device": str(resolve_device("auto")),
        "dtype": str(resolve_dtype(args.dtype, resolve_device("auto"))),
        "duration_s": args.duration, "pairs": pair_count,
        "data": str(args.data.relative_to(REPO) if args.data.is_relative_to(REPO) else args.data),
    }  # fmt: skip
    if version is not None:
        facts["model"] = {"version": version.version, "parameters": version.backend.describe()["parameters"]}
        facts["execution"] = version.execution.path.name if version.execution else facts["dtype"]
    return facts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store", help="CURRENT is served")
    parser.add_argument("--url", help="benchmark this running server instead of starting servers")
    parser.add_argument(
        "--servers",
        nargs="*",
        default=["batched", "unbatched"],
        choices=["batched", "unbatched", "naive"],
        help="servers to start and measure (none: only the in-process ceiling)",
    )
    parser.add_argument("--naive", action="store_true", help="also benchmark the naive server")
    parser.add_argument(
        "--endpoints", nargs="+", default=["score", "score_batch"], choices=["score", "score_batch"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 64, 256])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--batch-items", type=int, default=32, help="items per /score_batch request")
    parser.add_argument("--pairs", type=int, default=256, help="distinct input pairs")
    parser.add_argument("--ceiling-batch-sizes", nargs="+", type=int, default=[1, 4, 8, 16, 32, 64])
    parser.add_argument(
        "--ceiling-pools", nargs="*", type=int, default=[16, 64],
        help="also time batches cut as the server cuts them from this many pending items",
    )  # fmt: skip
    parser.add_argument(
        "--data", type=Path, help="JSONL(.gz) with prompt/chosen/rejected (default: the --mix's file)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every server"
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="compute workers of the batched servers and the ceiling (0: the service's auto count)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="every server's"
    )
    parser.add_argument(
        "--path", default="auto", choices=["auto", "torch", "onnx", "onnx-int8"],
        help="every server's REWARD_EXECUTION_PATH (auto with --dtype auto: measured at load)",
    )  # fmt: skip
    parser.add_argument(
        "--mix", default="hh", choices=sorted(MIXES),
        help="inputs: hh (the HH sample, 80 tokens on average) or long (AlpacaEval answers filling max_len)",
    )  # fmt: skip
    parser.add_argument(
        "--no-ceiling", dest="ceiling", action="store_false", help="skip the in-process ceiling"
    )
    parser.add_argument(
        "--ceiling-repeats", type=int, default=1, metavar="N",
        help="measure the in-process cases N times in turn and keep each one's median",
    )  # fmt: skip
    parser.add_argument(
        "--python-load", type=float, default=0.0, metavar="DUTY",
        help="also time the largest pool while a thread runs Python DUTY (0-1) of the time",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--plot", type=Path, help="write throughput and latency plots here (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-dtype",
        metavar="N",
        type=int,
        help="only compare --dtype with float32 on N preference pairs of --data, print JSON and exit",
    )
    parser.add_argument(
        "--ceiling-only", action="store_true", help="only measure the in-process ceiling, print JSON and exit"
    )
    parser.add_argument(
        "--compare-paths", metavar="ROUNDS", type=int,
        help="only time every execution path in process on --mix (--ceiling-batch-sizes); JSON, exit",
    )  # fmt: skip
    parser.add_argument(
        "--compare-forward", metavar="ROUNDS", type=int,
        help="only time the packed CPU forward against the padded one (--dtype; auto: both precisions) on "
        "--mix (--ceiling-batch-sizes), oneDNN's kernel cache capped as the server caps it; JSON, exit",
    )  # fmt: skip
    parser.add_argument("--serve-naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def compare_only(args: argparse.Namespace, min_chars: int) -> dict:
    """--compare-paths (every execution path timed in turn), --compare-forward (packed vs padded) or
    --compare-dtype (accuracy vs float32)."""
    configure_torch_threads(args.threads)
    if args.compare_forward:  # before any forward pass: oneDNN reads it when it first builds a kernel
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # as the server sets it
        pairs = load_pairs(args.data, args.pairs, args.seed, min_chars)
        dtypes = ["float32", "bfloat16"] if args.dtype == "auto" else [args.dtype]
        sizes, rounds = args.ceiling_batch_sizes, args.compare_forward
        rows = [
            row for dtype in dtypes
            for row in compare_forwards(args.model_store, pairs, dtype, sizes, rounds, args.seed)
        ]  # fmt: skip
        return {"cpu": cpu_model(), "mix": args.mix, "threads": args.threads, "rows": rows}
    if args.compare_paths:
        pairs = load_pairs(args.data, args.pairs, args.seed, min_chars)
        report = compare_paths(args.model_store, pairs, args.ceiling_batch_sizes, args.compare_paths)
        return {"cpu": cpu_model(), "mix": args.mix, **report}
    return compare_with_float32(args.model_store, args.data, args.dtype, args.compare_dtype, args.seed)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.workers_setting = args.workers
    data, min_chars = MIXES[args.mix]
    args.data = args.data or data
    if args.serve_naive:
        serve_naive(args.model_store, args.port, args.threads, args.dtype, args.path)
        return
    if args.compare_paths or args.compare_forward or args.compare_dtype:
        print(json.dumps(compare_only(args, min_chars), indent=2))
        return
    if args.naive and "naive" not in args.servers:
        args.servers.append("naive")
    pairs = load_pairs(args.data, args.pairs, args.seed, min_chars)
    ceiling, version = None, None
    if not args.url:
        configure_torch_threads(args.threads)
        settings = Settings(torch_threads=args.threads, compute_workers=args.workers)
        args.workers = settings.compute_workers_for(resolve_device("auto").type)
        pool = ComputePool(args.workers, args.threads, set_thread_threads, name="ceiling")
        version = load_live(args.model_store, args.dtype, args.path)
        ceiling = measure_ceiling(version, pairs, args, pool) if args.ceiling else None
    if args.ceiling_only:
        print(json.dumps({"dtype": str(version.backend.dtype), **ceiling}, indent=2))
        return
    facts = machine_facts(args, version, len(pairs))
    if args.url:
        results = run_matrix(args.url, args.url, None, args, pairs)
    else:
        results = benchmark_started_servers(args, pairs)
    if ceiling is not None and results:
        ceiling = bracketed(ceiling, measure_ceiling(version, pairs, args, pool))
    print(markdown(results, ceiling, facts))
    if args.json:
        report = {"machine": facts, "ceiling": ceiling, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(results, ceiling, args.plot)


if __name__ == "__main__":
    main()
