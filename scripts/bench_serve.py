"""Benchmark the reward service: served throughput and latency vs the model's in-process ceiling.

For each concurrency level, clients loop for `--duration` seconds against /score (1 item per request)
and /score_batch (`--batch-items` items), with batching on (the server's settings) and off
(REWARD_MAX_BATCH_SIZE=1), optionally against a naive one-request-one-forward FastAPI server of the same
model. The ceiling is the best batched forward throughput of the same model on the same inputs,
tokenization included, in this process. Prints a markdown table; `--json` writes every figure.

    python scripts/bench_serve.py --model-store model_store --concurrency 1 8 64 --duration 10 --naive
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --concurrency 64   # an already running server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.registry import forward_raw  # noqa: E402
from app.store import LoadedVersion, load_version, read_current, version_dir  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/hh_harmless_base.jsonl.gz")


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
    p99_ms: float


def load_pairs(path: Path | None, count: int, seed: int) -> list[dict]:
    """Real (prompt, response) pairs when the data file exists, else deterministic synthetic ones."""
    rng = random.Random(seed)
    if path is not None and path.is_file():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            records = [json.loads(line) for line in f]
        rng.shuffle(records)
        return [
            {"prompt": r["prompt"], "response": r[rng.choice(("chosen", "rejected"))]}
            for r in records[:count]
        ]
    words = str.split("the reward model scores helpful honest answers about water eggs code travel and music")
    return [
        {
            "prompt": " ".join(rng.choices(words, k=rng.randint(5, 80))),
            "response": " ".join(rng.choices(words, k=30)),
        }
        for _ in range(count)
    ]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def drive(
    url: str, endpoint: str, concurrency: int, duration: float, pairs: list[dict], batch_items: int
) -> dict:
    """`concurrency` clients, each sending its next request as soon as the previous one is answered."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    def body(i: int) -> dict:
        if endpoint == "score":
            return pairs[i % len(pairs)]
        start = (i * batch_items) % len(pairs)
        return {"items": [pairs[(start + k) % len(pairs)] for k in range(batch_items)]}

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.post(f"/{endpoint}", json=body(i))
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    per_request = 1 if endpoint == "score" else batch_items
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / elapsed,
        "items_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s} s")


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def server_command(store: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app",
        "--host",
        "127.0.0.1",
        "--model-store",
        str(store),
        "--stats-path",
        "",
    ]


def naive_command(store: Path, threads: int) -> list[str]:
    return [sys.executable, __file__, "--serve-naive", "--model-store", str(store), "--threads", str(threads)]


def load_live(store: Path) -> LoadedVersion:
    version = read_current(store)
    if version is None:
        raise SystemExit(f"{store}: no CURRENT version to benchmark")
    return load_version(version_dir(store, version))


def in_process_ceiling(version: LoadedVersion, pairs: list[dict], batch_sizes: list[int]) -> dict:
    """Best items/s of forward_raw (tokenize, pad, forward) over length-sorted `pairs`, per batch size."""
    lengths = [
        len(ids)
        for ids in version.tokenizer.encode_pairs(
            [p["prompt"] for p in pairs], [p["response"] for p in pairs]
        )
    ]
    by_length = [
        pairs[i] for i in sorted(range(len(pairs)), key=lengths.__getitem__)
    ]  # as the server groups them
    prompts, responses = [p["prompt"] for p in by_length], [p["response"] for p in by_length]
    forward_raw(version, prompts[:8], responses[:8])  # warm-up
    per_size = {}
    for size in batch_sizes:
        started = time.perf_counter()
        for start in range(0, len(pairs), size):
            forward_raw(version, prompts[start : start + size], responses[start : start + size])
        per_size[size] = len(pairs) / (time.perf_counter() - started)
    best = max(per_size, key=per_size.get)
    return {
        "best_items_per_s": per_size[best],
        "best_batch_size": best,
        "items_per_s_by_batch_size": per_size,
    }


def serve_naive(store: Path, port: int, threads: int) -> None:
    """A naive server: one request, one forward pass, no queue, no batching."""
    import uvicorn
    from fastapi import FastAPI

    torch.set_num_threads(threads)
    version = load_live(store)
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


def run_matrix(targets: dict[str, str], args: argparse.Namespace, pairs: list[dict]) -> list[Result]:
    results = []
    for name, url in targets.items():
        for endpoint in args.endpoints:
            for concurrency in args.concurrency:
                figures = asyncio.run(
                    drive(url, endpoint, concurrency, args.duration, pairs, args.batch_items)
                )
                results.append(Result(name, endpoint, concurrency, **figures))
                print(
                    f"  {name:10s} {endpoint:11s} c={concurrency:<4d} {figures['items_per_s']:9.1f} items/s",
                    file=sys.stderr,
                )
    return results


def benchmark_started_servers(args: argparse.Namespace, pairs: list[dict]) -> list[Result]:
    env = {"REWARD_TORCH_THREADS": str(args.threads), "REWARD_QUEUE_SIZE": "100000"}
    variants = {"batched": {}, "unbatched": {"REWARD_MAX_BATCH_SIZE": "1"}}
    results = []
    for name, extra in variants.items():
        if name in args.servers:
            with serving(server_command(args.model_store), {**env, **extra}) as url:
                results += run_matrix({name: url}, args, pairs)
    if "naive" in args.servers:
        with serving(naive_command(args.model_store, args.threads), {}) as url:
            results += run_matrix({"naive": url}, args, pairs)
    return results


def markdown(results: list[Result], ceiling: dict | None) -> str:
    lines = [
        "| server | endpoint | clients | req/s | items/s | p50 ms | p99 ms | errors | % of ceiling |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        share = f"{100 * r.items_per_s / ceiling['best_items_per_s']:.0f}%" if ceiling else "-"
        lines.append(
            f"| {r.server} | /{r.endpoint} | {r.concurrency} | {r.req_per_s:.1f} | {r.items_per_s:.1f} | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {share} |"
        )
    if ceiling:
        lines.append(
            f"\nIn-process ceiling: {ceiling['best_items_per_s']:.1f} items/s "
            f"(batch size {ceiling['best_batch_size']}, tokenization included)."
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-store", type=Path, default=REPO / "model_store", help="store whose CURRENT is served"
    )
    parser.add_argument("--url", help="benchmark this running server instead of starting servers")
    parser.add_argument(
        "--servers", nargs="+", default=["batched", "unbatched"], choices=["batched", "unbatched", "naive"]
    )
    parser.add_argument(
        "--naive", action="store_true", help="also benchmark the naive one-forward-per-request server"
    )
    parser.add_argument(
        "--endpoints", nargs="+", default=["score", "score_batch"], choices=["score", "score_batch"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--batch-items", type=int, default=32, help="items per /score_batch request")
    parser.add_argument("--pairs", type=int, default=256, help="distinct input pairs")
    parser.add_argument("--ceiling-batch-sizes", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="JSONL(.gz) with prompt/chosen/rejected"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every server"
    )
    parser.add_argument(
        "--no-ceiling", dest="ceiling", action="store_false", help="skip the in-process ceiling"
    )
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.serve_naive:
        serve_naive(args.model_store, args.port, args.threads)
        return
    if args.naive and "naive" not in args.servers:
        args.servers.append("naive")
    pairs = load_pairs(args.data, args.pairs, args.seed)
    ceiling = None
    if args.ceiling and not args.url:
        torch.set_num_threads(args.threads)
        ceiling = in_process_ceiling(load_live(args.model_store), pairs, args.ceiling_batch_sizes)
    results = (
        run_matrix({args.url: args.url}, args, pairs) if args.url else benchmark_started_servers(args, pairs)
    )
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
               "torch": torch.__version__, "duration_s": args.duration, "pairs": len(pairs)}  # fmt: skip
    print(markdown(results, ceiling))
    if args.json:
        report = {"machine": machine, "ceiling": ceiling, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
