"""Bounded overload soak on loopback: offer several times the sustainable rate and record what happens.

Phases, each open or closed loop against one real server (`python -m app`, started here):
  calibrate  closed loop, --clients concurrent clients: the sustainable request rate R
  overload   open loop at --factor x R for --duration-s (arrivals do not wait for answers)
  recovery   open loop at R / 2 for --recovery-s: how fast 429s stop and latency returns
It records accepted (200) p50/p99 latency, the 429 share and its latency, other errors, the server's
RSS every second, and per-second figures of the recovery. Latency counts from the scheduled send time,
so a slow client does not hide queueing (no coordinated omission).

With --hostile, it measures isolation instead: --clients innocent closed-loop clients for --isolation-s
alone ("clean"), then as long again beside one hostile client ("hostile") that cycles through poison
pills (unpaired surrogates in every endpoint's text fields), an oversized batch, and expensive batches of
long rare words at the text limit. It reports the innocent clients' failures and p50/p99 of both runs
and what the hostile client got.

    python scripts/soak.py --out soak.json                      # random-init model of the default size
    python scripts/soak.py --model-store model_store --duration-s 180 --env REWARD_QUEUE_SIZE=512
    python scripts/soak.py --model-store model_store --hostile --clients 64 --isolation-s 25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from app.loadgen import Connections, app_command, percentile, rss_mib, serving
from app.model import RewardModel, RewardModelConfig
from app.store import publish_version, save_checkpoint_files
from app.tokenizer import EncodingSpec, PairTokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = sorted((REPO / "data").glob("*.jsonl"))


@dataclass
class Sample:
    phase: str
    sent_at: float  # seconds since the phase started (scheduled time)
    latency: float  # seconds from the scheduled send to the answer
    status: int  # HTTP status; 0 = transport error, -1 = not sent (client connection cap)


def load_pairs(limit: int = 400) -> list[tuple[str, str]]:
    pairs = []
    for path in DATA:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            pairs.append((row["prompt"], row.get("chosen") or row.get("response") or ""))
    return [(p, r) for p, r in pairs if p.strip() and r.strip()][:limit]


def build_store(directory: Path, pairs: list[tuple[str, str]]) -> Path:
    """A random-init model of the default architecture: the compute of the real thing, no training."""
    texts = [text for pair in pairs for text in pair]
    tokenizer = PairTokenizer(train_tokenizer(texts, vocab_size=8000), EncodingSpec(max_len=256))
    torch.manual_seed(0)
    model = RewardModel(RewardModelConfig(vocab_size=tokenizer.vocab_size, max_len=256)).eval()
    metrics = {"reward_mean": 0.0, "reward_std": 1.0}
    write = lambda d: save_checkpoint_files(d, model, tokenizer, metrics)  # noqa: E731
    publish_version(directory, write, version="soak-v1")
    return directory


class Load:
    """Sends /score_batch requests of `items` random pairs and keeps every Sample."""

    def __init__(self, url: str, pairs: list[tuple[str, str]], items: int, max_outstanding: int):
        self.url = url
        self.pairs = pairs
        self.items = items
        self.samples: list[Sample] = []
        self.outstanding = 0
        self.max_outstanding = max_outstanding
        # a light keep-alive client: httpx costs ~5 ms of CPU per request, which at a few hundred
        # requests/s would take the cores from the server under test
        self.connections = Connections(url)
        self.failures: Counter[str] = Counter()  # status 0: what went wrong, by message
        self.rng = random.Random(0)

    def body(self) -> dict:
        chosen = self.rng.sample(self.pairs, self.items)
        return {"items": [{"prompt": p, "response": r} for p, r in chosen]}

    async def send(self, phase: str, phase_start: float, scheduled: float) -> float:
        """One request; returns its Retry-After (0 when it was not refused)."""
        if self.outstanding >= self.max_outstanding:
            self.samples.append(Sample(phase, scheduled - phase_start, 0.0, -1))
            return 0.0
        self.outstanding += 1
        retry_after = 0.0
        try:
            status, headers = await self.connections.send(self.connections.post("/score_batch", self.body()))
            retry_after = float(headers.get(b"retry-after", 0)) if status == 429 else 0.0
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            status = 0
            self.failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
        finally:
            self.outstanding -= 1
        self.samples.append(Sample(phase, scheduled - phase_start, time.monotonic() - scheduled, status))
        return retry_after

    async def closed_loop(self, phase: str, clients: int, duration_s: float) -> None:
        start = time.monotonic()

        async def client() -> None:
            while time.monotonic() - start < duration_s:
                await asyncio.sleep(await self.send(phase, start, time.monotonic()))  # clients honour 429s

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open_loop(self, phase: str, rate: float, duration_s: float) -> list[asyncio.Task]:
        """Send at `rate` for `duration_s`; returns at the last arrival, with the answers still pending
        (so the next phase starts while this one's queue drains, as it would in production)."""
        start = time.monotonic()
        tasks = []
        for index in range(int(rate * duration_s)):
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            tasks.append(asyncio.create_task(self.send(phase, start, scheduled)))
        return tasks


async def sample_rss(pid: int, into: list[tuple[float, float]], stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        into.append((round(time.monotonic() - start, 1), round(rss_mib(pid), 1)))
        await asyncio.sleep(1.0)


def seconds(values: list[float], q: float) -> float | None:
    """A latency quantile, rounded for the report."""
    value = percentile(values, q)
    return None if value is None else round(value, 4)


def summarize(samples: list[Sample], duration_s: float) -> dict:
    ok = [s.latency for s in samples if s.status == 200]
    shed = [s.latency for s in samples if s.status == 429]
    return {
        "requests": len(samples),
        "offered_per_s": round(len(samples) / duration_s, 1),
        "accepted_per_s": round(len(ok) / duration_s, 1),
        "ok_p50_s": seconds(ok, 0.5), "ok_p99_s": seconds(ok, 0.99), "ok_max_s": seconds(ok, 1.0),
        "shed_share": round(len(shed) / max(1, len(samples)), 3),
        "shed_p50_s": seconds(shed, 0.5), "shed_p99_s": seconds(shed, 0.99),
        "other_statuses": _count(s.status for s in samples if s.status not in (200, 429)),
    }  # fmt: skip


def _count(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def per_second(samples: list[Sample]) -> list[dict]:
    seconds: dict[int, list[Sample]] = {}
    for sample in samples:
        seconds.setdefault(int(sample.sent_at), []).append(sample)
    return [{"second": second, **summarize(group, 1.0)} for second, group in sorted(seconds.items())]


def of_phase(samples: list[Sample], phase: str) -> list[Sample]:
    return [s for s in samples if s.phase == phase]


def rare_words(chars: int, rng: random.Random) -> str:
    """Words of random letters and digits: several times the tokenizer work of prose per character."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    words, size = [], 0
    while size < chars:
        words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(12, 40))))
        size += len(words[-1]) + 1
    return " ".join(words)[:chars]


def hostile_requests(text_limit: int) -> list[tuple[str, dict]]:
    """What the hostile client cycles through: every one is refused alone or is legitimate work."""
    hh = "\n\nHuman: {}\n\nAssistant: {}"
    expensive, fine = rare_words(text_limit, random.Random(1)), {"prompt": "p", "response": "fine"}
    return [
        ("/score", {"prompt": "hi", "response": "\ud800"}),
        ("/score_batch", {"items": [fine] * 8 + [{"prompt": "p", "response": "\udc00"}]}),
        ("/get_reward", {"query": [hh.format("hi \udfff", "yes")]}),
        ("/get_reward", {"query": [hh.format("hi", "ok"), hh.format("hi", "bad \udbff")]}),
        ("/classify", {"input": hh.format("hi", "\ud800")}),
        ("/classify", {"input": [hh.format("q", "a"), hh.format("\udc00", "a")]}),
        ("/score_batch", {"items": [{"prompt": "p", "response": "r"}] * 300}),  # beyond max_items
        ("/score_batch", {"items": [{"prompt": expensive, "response": expensive}] * 64}),
    ]  # fmt: skip


async def hostile_client(url: str, duration_s: float, statuses: Counter[str]) -> None:
    """One client, one request at a time, through hostile_requests until `duration_s` is over."""
    connections = Connections(url)
    requests = [(path, connections.post(path, body)) for path, body in hostile_requests(20000)]
    start, index = time.monotonic(), 0
    while time.monotonic() - start < duration_s:
        path, request = requests[index % len(requests)]
        try:
            status, _ = await connections.send(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            status = 0
        statuses[f"{path} {status}"] += 1
        index += 1
    connections.close()


async def isolation(args: argparse.Namespace, url: str) -> dict:
    """Innocent clients alone, then beside a hostile one: failures and latency of the innocent."""
    load = Load(url, load_pairs(), args.items, args.max_outstanding)
    await load.closed_loop("warmup", args.clients, 5)
    await load.closed_loop("clean", args.clients, args.isolation_s)
    hostile: Counter[str] = Counter()
    await asyncio.gather(
        load.closed_loop("hostile", args.clients, args.isolation_s),
        hostile_client(url, args.isolation_s, hostile),
    )
    load.connections.close()
    phases = {
        name: summarize(of_phase(load.samples, name), args.isolation_s) for name in ("clean", "hostile")
    }
    for phase in phases.values():
        phase["innocent_failures"] = sum(phase["other_statuses"].values())
    clean_p99, hostile_p99 = phases["clean"]["ok_p99_s"], phases["hostile"]["ok_p99_s"]
    return {
        "phases": phases,
        "p99_ratio": round(hostile_p99 / clean_p99, 2) if clean_p99 and hostile_p99 else None,
        "hostile_statuses": dict(sorted(hostile.items())),
        "connection_failures": dict(load.failures.most_common(5)),
    }


def isolation_markdown(result: dict, args: argparse.Namespace) -> str:
    rows = [
        "| run | innocent req/s | p50 s | p99 s | max s | 429 share | innocent failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in result["phases"].items():
        rows.append(
            f"| {name} | {s['accepted_per_s']} | {s['ok_p50_s']} | {s['ok_p99_s']} | {s['ok_max_s']} | "
            f"{s['shed_share']:.1%} | {s['innocent_failures']} {s['other_statuses'] or ''} |"
        )
    return "\n".join([
        f"{args.clients} innocent clients, /score_batch of {args.items} items, {args.isolation_s:g} s a run",
        "",
        *rows, "", f"innocent p99 hostile/clean: {result['p99_ratio']}",
        f"hostile client got: {result['hostile_statuses']}",
        f"connection failures (status 0): {result['connection_failures'] or 'none'}",
    ])  # fmt: skip


async def soak(args: argparse.Namespace, url: str, pid: int) -> dict:
    load = Load(url, load_pairs(), args.items, args.max_outstanding)
    rss: list[tuple[float, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, rss, stop))
    await load.closed_loop("warmup", args.clients, 5)
    await load.closed_loop("calibrate", args.clients, args.calibrate_s)
    rate = sum(s.status == 200 for s in of_phase(load.samples, "calibrate")) / args.calibrate_s
    overload = await load.open_loop("overload", args.factor * rate, args.duration_s)
    recovery = await load.open_loop("recovery", rate / 2, args.recovery_s)
    await asyncio.gather(*overload, *recovery)
    stop.set()
    await sampler
    load.connections.close()
    phases = {"calibrate": args.calibrate_s, "overload": args.duration_s, "recovery": args.recovery_s}
    return {
        "sustainable_per_s": round(rate, 1),
        "phases": {name: summarize(of_phase(load.samples, name), time_s) for name, time_s in phases.items()},
        "recovery_per_second": per_second(of_phase(load.samples, "recovery")),
        "rss_mib": rss,
        "connection_failures": dict(load.failures.most_common(5)),
    }


def markdown(result: dict, args: argparse.Namespace) -> str:
    rows = [
        "| phase | offered/s | accepted/s | 200 p50 | 200 p99 | 200 max | 429 share | 429 p50 | 429 p99 "
        "| other |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["phases"].items():
        rows.append(
            f"| {name} | {s['offered_per_s']} | {s['accepted_per_s']} | {s['ok_p50_s']} | {s['ok_p99_s']} | "
            f"{s['ok_max_s']} | {s['shed_share']:.1%} | {s['shed_p50_s']} | {s['shed_p99_s']} | "
            f"{s['other_statuses'] or '-'} |"
        )
    rss = [value for _, value in result["rss_mib"]]
    return "\n".join([
        f"requests of {args.items} items; sustainable {result['sustainable_per_s']} req/s; overload at "
        f"{args.factor}x for {args.duration_s:g} s; latencies in seconds", "", *rows, "",
        f"server RSS MiB: start {rss[0]}, max {max(rss)}, end {rss[-1]} ({len(rss)} samples, one per second)",
        f"connection failures (status 0): {result['connection_failures'] or 'none'}",
    ])  # fmt: skip


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model-store", type=Path, help="serve this store (default: build a random model)")
    parser.add_argument("--duration-s", type=float, default=120, help="length of the overload phase")
    parser.add_argument("--calibrate-s", type=float, default=20)
    parser.add_argument("--recovery-s", type=float, default=30)
    parser.add_argument("--factor", type=float, default=4.0, help="overload rate / sustainable rate")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients of the calibration")
    parser.add_argument("--items", type=int, default=4, help="pairs per /score_batch request")
    parser.add_argument("--max-outstanding", type=int, default=2000, help="client connection cap")
    parser.add_argument("--env", action="append", default=[], help="REWARD_X=value for the server")
    parser.add_argument("--out", type=Path, help="write the full result as JSON here")
    parser.add_argument(
        "--hostile", action="store_true", help="isolation: innocent clients beside a hostile one"
    )
    parser.add_argument("--isolation-s", type=float, default=25, help="length of each --hostile run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.model_store or build_store(Path(tmp) / "model_store", load_pairs())
        env = {"REWARD_STATS_PATH": "", **dict(item.split("=", 1) for item in args.env)}
        with serving(app_command(store), env, Path(tmp) / "server.log") as (url, process):
            run = isolation(args, url) if args.hostile else soak(args, url, process.pid)
            result = asyncio.run(run)
    result["settings"] = {**vars(args), "env": env}
    print(isolation_markdown(result, args) if args.hostile else markdown(result, args))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
