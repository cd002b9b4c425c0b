"""The CPU serving targets, measured: repeated runs of bench_serve, medians, and the ratios.

Each repetition runs, in turn (so that drift of the machine touches every case alike):
1. the batched server in the measured path (`auto`), 1 and 64 clients on /score, with its in-process
   ceiling (batch 1 and the best batch size);
2. a naive one-request-one-forward server in float32 (the form users write);
3. a naive server in the path `auto` measured fastest.

    python scripts/bench_targets.py --repeats 3 --mix long --json runs/targets.json

Prints one markdown table of medians and the target ratios: served / naive float32 and / naive fastest
at 64 clients (>= 2 and >= 1.5), p99 / naive p99 (<= 0.5), served / ceiling (>= 0.9), one-client served
p50 / in-process single-item latency (<= 1.3). Each ratio is taken within every repetition (the ceiling
is measured around its served runs) and the median of those is reported, with each repetition's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "bench_serve.py"
FIGURES = ("items_per_s", "p50_ms", "p99_ms")
CASES = {
    "batched": ["--servers", "batched", "--ceiling-batch-sizes", "1", "16", "--ceiling-pools", "64"],
    "naive float32": ["--servers", "naive", "--dtype", "float32", "--path", "torch", "--no-ceiling"],
    "naive fastest": ["--servers", "naive", "--no-ceiling"],
}


def run_case(name: str, common: list[str], out: Path) -> dict:
    cmd = [sys.executable, str(SCRIPT), *common, *CASES[name], "--json", str(out)]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def figure(report: dict, concurrency: int, key: str) -> float:
    (result,) = [r for r in report["results"] if r["concurrency"] == concurrency]
    return result[key]


def table_of(report: dict) -> dict:
    """One repetition's figures: per case and client count items/s, p50 and p99; the ceiling's."""
    table: dict = {
        f"{name} {clients}": {key: figure(report[name], clients, key) for key in FIGURES}
        for name in CASES
        for clients in (1, 64)
    }
    ceiling = report["batched"]["ceiling"]
    table["ceiling best"] = ceiling["best_items_per_s"]
    # a lone item's rate: one batch at a time with every thread (side by side is throughput, not latency)
    alone = ceiling.get("one_at_a_time_by_batch_size") or ceiling["items_per_s_by_batch_size"]
    table["ceiling batch 1"] = alone["1"]
    return table


def medians(reports: list[dict]) -> dict:
    """Each figure of table_of, its median over the repetitions."""
    tables = [table_of(r) for r in reports]
    return {
        key: (
            {k: statistics.median(t[key][k] for t in tables) for k in FIGURES}
            if isinstance(value, dict)
            else statistics.median(t[key] for t in tables)
        )
        for key, value in tables[0].items()
    }


def target_ratios(reports: list[dict]) -> list[tuple[str, float, str, list[float]]]:
    """Each target's ratio in every repetition and their median. A ratio pairs figures of one repetition
    (the served run and the ceiling measured around it), not medians of different minutes."""
    per_repetition = [verdicts(table_of(r)) for r in reports]
    ratios = []
    for i, (name, _, goal) in enumerate(per_repetition[0]):
        values = [verdict[i][1] for verdict in per_repetition]
        ratios.append((name, statistics.median(values), goal, values))
    return ratios


def verdicts(m: dict) -> list[tuple[str, float, str]]:
    served, one = m["batched 64"], m["batched 1"]
    naive32, fastest = m["naive float32 64"], m["naive fastest 64"]
    single_ms = 1000 / m["ceiling batch 1"]
    return [
        ("served / naive float32 (64 clients)", served["items_per_s"] / naive32["items_per_s"], ">= 2"),
        ("served / naive fastest (64 clients)", served["items_per_s"] / fastest["items_per_s"], ">= 1.5"),
        ("served p99 / naive fastest p99", served["p99_ms"] / fastest["p99_ms"], "<= 0.5"),
        ("served / in-process ceiling", served["items_per_s"] / m["ceiling best"], ">= 0.9"),
        ("one client: served p50 / in-process single item", one["p50_ms"] / single_ms, "<= 1.3"),
    ]


def markdown(m: dict, ratios: list[tuple[str, float, str, list[float]]], cpu: str, repeats: int) -> str:
    lines = [
        f"CPU: {cpu}; medians of {repeats} repetitions.",
        "",
        "| server | clients | items/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in CASES:
        for clients in (1, 64):
            row = m[f"{name} {clients}"]
            rate, p50, p99 = row["items_per_s"], row["p50_ms"], row["p99_ms"]
            lines.append(f"| {name} | {clients} | {rate:.1f} | {p50:.1f} | {p99:.0f} |")
    lines += [
        "",
        f"In-process ceiling: {m['ceiling best']:.1f} items/s at its best batch size, "
        f"{m['ceiling batch 1']:.1f} items/s at batch 1, alone "
        f"({1000 / m['ceiling batch 1']:.1f} ms per item).",
        "",
        "| target | median of the repetitions | each repetition | goal |",
        "| --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| {name} | {value:.2f} | {' / '.join(f'{v:.2f}' for v in values)} | {goal} |"
        for name, value, goal, values in ratios
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mix", default="long", help="bench_serve's --mix")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--model-store", type=Path, help="bench_serve's --model-store")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    args = parser.parse_args(argv)
    common = ["--mix", args.mix, "--endpoints", "score", "--concurrency", "1", "64"]
    common += ["--duration", str(args.duration), "--ceiling-repeats", "2"]
    if args.model_store:
        common += ["--model-store", str(args.model_store)]
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            reports.append(
                {name: run_case(name, common, Path(tmp) / f"{rep}-{i}.json") for i, name in enumerate(CASES)}
            )
    m, ratios = medians(reports), target_ratios(reports)
    cpu = reports[0]["batched"]["machine"].get("cpu", "unknown CPU")
    print(markdown(m, ratios, cpu, args.repeats))
    if args.json:
        report = {"runs": reports, "medians": m, "ratios": ratios, "cpu": cpu}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
