"""Data preparation: input files -> clean, de-duplicated pairs split by prompt, plus synthetic negatives.

    reward-prepare-data --input IN [IN ...] --output pairs.jsonl --num_synthetic N

The output is one JSON Lines file of unified records, each with its `source`, `kind` and `split`
("train" or "validation"); no prompt appears in both splits.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.training.pairs import TRAIN, VALIDATION, MalformedRecord, PreferencePair, iter_records, write_pairs
from app.training.synthetic import KINDS, OPT_IN_KINDS, synthesize

MAX_REPORTED = 20  # malformed lines printed one by one; the rest are only counted


class PreparationError(RuntimeError):
    """Input that cannot become a training set (a malformed line under --strict, or no pairs at all)."""


@dataclass
class ReadReport:
    malformed: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, where: str, reason: MalformedRecord) -> None:
        self.malformed += 1
        if len(self.messages) < MAX_REPORTED:
            self.messages.append(f"{where}: {reason}")


def read_inputs(paths: Sequence[str | Path], strict: bool, report: ReadReport) -> list[PreferencePair]:
    """Every well-formed pair; malformed lines are reported with file:line, or raise when strict."""
    pairs = []
    for path in paths:
        for line_no, item in iter_records(path):
            if isinstance(item, MalformedRecord):
                if strict:
                    raise PreparationError(f"{path}:{line_no}: {item}")
                report.add(f"{path}:{line_no}", item)
            else:
                pairs.append(item)
    return pairs


def drop_unusable(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """Drop exact duplicates (first one wins) and pairs whose chosen equals rejected."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for pair in pairs:
        if pair.chosen.strip() == pair.rejected.strip() or pair.key in seen:
            continue
        seen.add(pair.key)
        kept.append(pair)
    return kept


def split_of(prompt: str, seed: int, valid_fraction: float) -> str:
    """Deterministic by (seed, prompt) alone, so a prompt lands on one side whatever else is in the file."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return VALIDATION if int.from_bytes(digest[:8], "big") / 2**64 < valid_fraction else TRAIN


def assign_splits(pairs: Sequence[PreferencePair], seed: int, valid_fraction: float) -> list[PreferencePair]:
    return [replace(p, split=split_of(p.prompt, seed, valid_fraction)) for p in pairs]


def cap_per_source(pairs: Sequence[PreferencePair], limit: int | None, seed: int) -> list[PreferencePair]:
    """At most `limit` pairs from each source, a seeded random sample; input order is kept."""
    if not limit:
        return list(pairs)
    rng = random.Random(seed)
    by_source: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_source.setdefault(pair.source, []).append(index)
    keep = set()
    for indices in by_source.values():
        keep.update(indices if len(indices) <= limit else rng.sample(indices, limit))
    return [pair for index, pair in enumerate(pairs) if index in keep]


def balance_lengths(
    pairs: Sequence[PreferencePair], sources: Sequence[str], seed: int
) -> list[PreferencePair]:
    """In the training split of each named source (every source when none is named), as many pairs won
    by the longer answer as by the shorter: a seeded sample of the larger side is kept. Pairs of equal
    length, validation pairs and other sources are untouched; input order is kept."""
    rng = random.Random(seed)
    sides: dict[tuple[str, bool], list[int]] = {}
    for index, pair in enumerate(pairs):
        if pair.split != TRAIN or (sources and pair.source not in sources):
            continue
        if len(pair.chosen) != len(pair.rejected):
            sides.setdefault((pair.source, len(pair.chosen) > len(pair.rejected)), []).append(index)
    drop = set()
    for (source, longer_won), indices in sides.items():
        other = len(sides.get((source, not longer_won), []))
        if len(indices) > other:
            drop.update(rng.sample(indices, len(indices) - other))
    return [pair for index, pair in enumerate(pairs) if index not in drop]


def prepare_pairs(
    inputs: Sequence[str | Path],
    num_synthetic: int = 0,
    seed: int = 0,
    valid_fraction: float = 0.1,
    max_per_source: int | None = None,
    strict: bool = False,
    report: ReadReport | None = None,
    length_balance: Sequence[str] | None = None,
    synthetic_kinds: Sequence[str] = KINDS,
) -> list[PreferencePair]:
    """The whole preparation; raises PreparationError when nothing usable is left.

    `length_balance` (source names; empty for every source) balances the training split by length
    after the cap (see balance_lengths); None leaves it as sampled."""
    report = report if report is not None else ReadReport()
    real = drop_unusable(read_inputs(inputs, strict, report))
    real = assign_splits(cap_per_source(real, max_per_source, seed), seed, valid_fraction)
    if length_balance is not None:
        real = balance_lengths(real, length_balance, seed)
    pairs = drop_unusable(real + synthesize(real, num_synthetic, seed, synthetic_kinds))
    if not pairs:
        raise PreparationError(
            f"no usable pairs in {', '.join(map(str, inputs))} ({report.malformed} malformed lines): "
            "expected JSON Lines with 'prompt', 'chosen', 'rejected' or HH transcripts"
        )
    return pairs


def count_table(pairs: Sequence[PreferencePair]) -> str:
    counts = Counter((p.source, p.kind, p.split) for p in pairs)
    rows = sorted({(source, kind) for source, kind, _ in counts})
    lines = [f"{'source':<28} {'kind':<12} {'train':>8} {'validation':>11}"]
    for source, kind in rows:
        lines.append(
            f"{source:<28} {kind:<12} {counts[source, kind, TRAIN]:>8} {counts[source, kind, VALIDATION]:>11}"
        )
    totals = Counter(p.split for p in pairs)
    lines.append(f"{'total':<41} {totals[TRAIN]:>8} {totals[VALIDATION]:>11}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="pair files: unified JSONL or HH transcripts, .gz ok"
    )
    parser.add_argument("--output", required=True, help="output JSONL with source, kind and split per record")
    parser.add_argument(
        "--num_synthetic", "--num-synthetic", type=int, default=0, help="synthetic negatives to add"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, the caps and the synthetic negatives"
    )
    parser.add_argument(
        "--valid-fraction", type=float, default=0.1, help="share of prompts held out for validation"
    )
    parser.add_argument(
        "--max-per-source", type=int, default=None, help="cap on real pairs per source (sampled)"
    )
    parser.add_argument(
        "--length-balance",
        nargs="*",
        metavar="SOURCE",
        default=None,
        help="after the cap, keep as many training pairs won by the longer answer as by the shorter, "
        "in the named sources (all sources when none is named); validation keeps its natural mix",
    )
    parser.add_argument(
        "--synthetic-kinds",
        nargs="+",
        choices=(*KINDS, *OPT_IN_KINDS),
        default=list(KINDS),
        help=f"synthetic kinds to make, in rotation (default: all but {', '.join(OPT_IN_KINDS)})",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.valid_fraction < 1.0:
        raise SystemExit("--valid-fraction must be in [0, 1)")
    report = ReadReport()
    try:
        pairs = prepare_pairs(
            args.input,
            args.num_synthetic,
            args.seed,
            args.valid_fraction,
            args.max_per_source,
            args.strict,
            report,
            args.length_balance,
            args.synthetic_kinds,
        )
    except (PreparationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for message in report.messages:
        print(f"skipped {message}", file=sys.stderr)
    if report.malformed:
        print(
            f"skipped {report.malformed} malformed line(s); use --strict to stop at the first",
            file=sys.stderr,
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_pairs(args.output, pairs)
    print(count_table(pairs))
    print(f"wrote {len(pairs)} pairs to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
