"""Time the CPU forward of the native model: packed inputs (what the service runs) against the padded
forward (torch's nested-tensor fast path), in each precision, on batches of a mix's pairs.

For every batch size, the pairs are taken in a random order (as a server meets them) and, for batches
of more than one, also sorted by length (the in-process ceiling's batches). The two forwards run in
turn, `--rounds` times, so that drift of a shared machine touches both alike; the median per-batch
latency and items/s are printed as a markdown table with the CPU model, and `--json` writes them.

    python scripts/bench_forward.py --mix hh --dtypes float32 bfloat16 --batch-sizes 1 16 --rounds 5

Each process starts with oneDNN's kernel cache capped as the server caps it
(`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, 64 unless set), since the cache decides how often reduced-precision
kernels are compiled for new shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # as app/__main__.py sets it
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # bench_serve, also when this file is imported by path

import torch  # noqa: E402
from bench_serve import MIXES, cpu_model, load_live, load_pairs  # noqa: E402


def padded_forward(version, batch: list[list[int]]) -> None:
    """The model's own forward on the batch padded to its longest member (length-sorted first)."""
    ordered = sorted(batch, key=len)
    version.backend.model(*version.backend.tokenizer.pad(ordered))


def time_batches(forward, batches: list[list[list[int]]]) -> tuple[float, float]:
    """Median milliseconds per batch and items/s over one pass."""
    times = []
    with torch.inference_mode():
        for batch in batches:
            started = time.perf_counter()
            forward(batch)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, sum(map(len, batches)) / sum(times)


def measure(
    store: Path, dtype: str, mix: str, pairs_count: int, sizes: list[int], rounds: int, seed: int
) -> list[dict]:
    version = load_live(store, dtype, "torch")
    data, min_chars = MIXES[mix]
    pairs = load_pairs(data, pairs_count, seed, min_chars)
    ids = version.backend.encode([p["prompt"] for p in pairs], [p["response"] for p in pairs])
    random.Random(seed).shuffle(ids)
    forwards = {"packed": version.backend.forward, "padded": lambda b: padded_forward(version, b)}
    rows = []
    for size in sizes:
        orders = {"random": ids} | ({"sorted": sorted(ids, key=len)} if size > 1 else {})
        for order, items in orders.items():
            batches = [items[i : i + size] for i in range(0, len(items), size)]
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in forwards}
            for _ in range(rounds):
                for name, forward in forwards.items():
                    figures[name].append(time_batches(forward, batches))
            for name, values in figures.items():
                rows.append({
                    "dtype": dtype, "batch": size, "order": order, "forward": name,
                    "ms_per_batch": statistics.median(v[0] for v in values),
                    "items_per_s": statistics.median(v[1] for v in values),
                })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store", help="CURRENT is timed")
    parser.add_argument("--mix", default="hh", choices=sorted(MIXES))
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes:
        rows += measure(
            args.model_store, dtype, args.mix, args.pairs, args.batch_sizes, args.rounds, args.seed
        )
    print(f"CPU: {cpu_model()}, {args.threads} threads, torch {torch.__version__}, mix {args.mix}, "
          f"medians of {args.rounds} rounds\n")  # fmt: skip
    print("| dtype | batch | order | forward | ms per batch | items/s |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['dtype']} | {r['batch']} | {r['order']} | {r['forward']} | {r['ms_per_batch']:.1f} "
              f"| {r['items_per_s']:.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "mix": args.mix, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
