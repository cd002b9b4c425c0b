"""What a trainer sees at 1x, 4x and 10x the sustainable load, driven with its own request loop.

A real server (`python -m app`, started here on loopback) is first driven in a closed loop by --clients
concurrent trainer calls: the samples per second it completes is the sustainable load S. Then, for each
factor K, single samples arrive open loop at K x S per second for --duration-s, each one a call in the
trainer's own pattern (app/adapters/callers.py: OpenRLHF 5 tries at 1 s on /get_reward; verl 16 tries with
backoff, no retry of a 4xx, on /classify). Recorded per factor: samples rewarded and lost, the statuses
seen, p50/p99 latency from the scheduled arrival to the reward (retries included), the time to drain
(from the end of the arrival window to the last answer; negative when all were answered before it
ended), the server's peak RSS and the peak queue depth (/metrics).

    python scripts/trainer_load.py --model-store model_store --trainer openrlhf --out openrlhf.json
    python scripts/trainer_load.py --model-store model_store --trainer verl --factors 1 4 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from app.adapters.callers import CallRecord, openrlhf_reward, verl_reward
from app.loadgen import app_command, rss_mib, serving

REPO = Path(__file__).resolve().parents[1]
PROMPT = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
QUESTIONS = ["How do I boil an egg?", "Why is the sky blue?", "Write a short poem about rivers."]
ANSWER = (
    "Here is a careful answer. Put the egg in a pot of cold water, bring it to a boil, then let it "
    "simmer for eight to ten minutes. Cool it in cold water so that the shell comes off easily. "
)  # about 100 words with the repeat below, as the trainers' samples in the measurements
QUEUE_DEPTH = re.compile(r"^reward_queue_depth (\S+)$", re.MULTILINE)
Call = Callable[[httpx.AsyncClient, str, int], Awaitable[CallRecord]]


def sample(index: int) -> tuple[str, str]:
    prompt = PROMPT.format(question=QUESTIONS[index % len(QUESTIONS)])
    return prompt, f"{prompt}{ANSWER * 2}(sample {index})<|im_end|>"


async def call_openrlhf(client: httpx.AsyncClient, url: str, index: int) -> CallRecord:
    prompt, text = sample(index)
    return await openrlhf_reward(client, f"{url}/get_reward", text, prompt)


async def call_verl(client: httpx.AsyncClient, url: str, index: int) -> CallRecord:
    return await verl_reward(client, url, sample(index)[1])


CALLS: dict[str, Call] = {"openrlhf": call_openrlhf, "verl": call_verl}


async def watch_server(url: str, pid: int, peaks: dict[str, float], stop: asyncio.Event) -> None:
    """Peak RSS and queue depth, sampled every 0.5 s on a connection of its own."""
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            peaks["rss_mib"] = max(peaks["rss_mib"], rss_mib(pid))
            try:
                found = QUEUE_DEPTH.search((await client.get(f"{url}/metrics")).text)
                peaks["queue_depth"] = max(peaks["queue_depth"], float(found.group(1)) if found else 0.0)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)


async def calibrate(call: Call, url: str, clients: int, duration_s: float, connections: int) -> float:
    """Samples per second completed by `clients` trainer calls in a closed loop: the sustainable load."""
    done = 0
    deadline = time.monotonic() + duration_s
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections), timeout=None) as client:

        async def one_client(offset: int) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                if (await call(client, url, offset + done)).reward is not None:
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*(one_client(i * 100_000) for i in range(clients)))
    return done / (time.monotonic() - started)


async def offered(call: Call, url: str, rate: float, duration_s: float, connections: int) -> dict:
    """Arrivals at `rate` per second for `duration_s`, open loop; the figures of every sample."""
    latencies: list[float] = []
    records: list[CallRecord] = []
    start = time.monotonic()
    count = int(rate * duration_s)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections), timeout=None) as client:

        async def arrival(index: int) -> None:
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            record = await call(client, url, index)
            records.append(record)
            if record.reward is not None:
                latencies.append(time.monotonic() - scheduled)

        await asyncio.gather(*(arrival(i) for i in range(count)))
    latencies.sort()
    return {
        "samples": count,
        "rewarded": len(latencies),
        "lost": count - len(latencies),
        "statuses": dict(Counter(str(s) for r in records for s in r.statuses)),
        "p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)
        if latencies
        else None,
        "drain_s": round(time.monotonic() - start - duration_s, 1),
    }


async def run(args: argparse.Namespace, url: str, pid: int) -> dict:
    call = CALLS[args.trainer]
    sustainable = await calibrate(call, url, args.clients, args.calibrate_s, args.connections)
    result = {"trainer": args.trainer, "sustainable_samples_per_s": round(sustainable, 1), "factors": {}}
    for factor in args.factors:
        peaks, stop = {"rss_mib": 0.0, "queue_depth": 0.0}, asyncio.Event()
        watcher = asyncio.create_task(watch_server(url, pid, peaks, stop))
        figures = await offered(call, url, factor * sustainable, args.duration_s, args.connections)
        stop.set()
        await watcher
        result["factors"][f"{factor}x"] = {**figures, "peak_rss_mib": round(peaks["rss_mib"]),
                                           "peak_queue_depth": int(peaks["queue_depth"])}  # fmt: skip
        print(json.dumps({f"{factor}x": result["factors"][f"{factor}x"]}), flush=True)
    return result


def markdown(result: dict) -> str:
    lines = [
        f"{result['trainer']}: sustainable {result['sustainable_samples_per_s']} samples/s",
        "| load | samples | rewarded | lost | p50 s | p99 s | drain s | peak RSS MiB | peak queue | statuses"
        " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in result["factors"].items():
        lines.append(
            f"| {name} | {f['samples']} | {f['rewarded']} | {f['lost']} | {f['p50_s']} | {f['p99_s']} | "
            f"{f['drain_s']} | {f['peak_rss_mib']} | {f['peak_queue_depth']} | {f['statuses']} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store")
    parser.add_argument("--trainer", choices=sorted(CALLS), default="openrlhf")
    parser.add_argument("--factors", type=float, nargs="+", default=[1, 4, 10])
    parser.add_argument("--duration-s", type=float, default=10.0, help="arrival time per factor")
    parser.add_argument("--calibrate-s", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients while calibrating")
    parser.add_argument("--connections", type=int, default=256, help="the load generator's connection pool")
    parser.add_argument("--env", nargs="*", default=[], help="REWARD_*=value settings of the server")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    env = {"REWARD_LOG_LEVEL": "warning", **dict(item.split("=", 1) for item in args.env)}
    log_path = Path(tempfile.gettempdir()) / f"trainer_load-{os.getpid()}.log"
    with serving(app_command(args.model_store), env, log_path) as (url, process):
        result = asyncio.run(run(args, url, process.pid))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
