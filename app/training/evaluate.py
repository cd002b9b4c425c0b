"""Evaluate a published reward model on pair files, per file and per source, next to simple baselines.

    reward-evaluate --model-store model_store --pairs pairs.jsonl [more.jsonl.gz ...] [--output report.json]

For each group of pairs: pair accuracy of the model, of the heuristic reward, of the hybrid the service
serves (0.5 heuristic + 0.5 standardized model), of the length-only rules (shorter wins / longer wins);
accuracy on length-matched pairs and on pairs whose chosen answer is the shorter one (where a length
detector fails); the correlation of reward with response length; calibration: accuracy per bucket of
|score gap| next to the sigmoid(|gap|) a Bradley-Terry model predicts; and how often the chosen answer
beats an empty response to the same prompt, by the model and by the hybrid (a policy that learns to say
nothing is the cheapest exploit of a reward model trained where the shorter answer tends to win); and the
refusal check (app/training/refusal.py): how often the chosen answer beats a generic refusal to the same
prompt (wanted on benign prompts) and how often a refusal beats the rejected answer (wanted on harmful
ones), by the model and by the hybrid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import default_of
from app.errors import CheckpointError
from app.heuristics import HeuristicConfig, heuristic_rewards
from app.normalize import hybrid, mixing_weights
from app.store import LoadedVersion, load_version, read_current
from app.training.pairs import PreferencePair, read_pairs
from app.training.plots import plot_evaluation
from app.training.refusal import REFUSALS, refusal_inputs, refusal_rates
from app.training.scoring import backend_rewards

LENGTH_MATCH_TOLERANCE = 0.2  # chosen and rejected within 20% of each other's length count as matched
CALIBRATION_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # buckets of sigmoid(|gap|)
# the hybrid the service serves by default: its default mixing weights, from Settings (not the environment)
HYBRID_WEIGHTS = mixing_weights(None, None, (default_of("alpha"), default_of("beta")))


@dataclass
class ScoredPairs:
    """Rewards of chosen and rejected responses, (N,) arrays each, aligned with `pairs`."""

    pairs: list[PreferencePair]
    model: tuple[np.ndarray, np.ndarray]
    heuristic: tuple[np.ndarray, np.ndarray]
    hybrid: tuple[np.ndarray, np.ndarray]
    length: tuple[np.ndarray, np.ndarray]  # characters
    empty: tuple[np.ndarray, np.ndarray] | None = None  # model and hybrid reward of an empty response
    refusal: tuple[np.ndarray, np.ndarray] | None = None  # model and hybrid reward of refusals, (N, R) each

    def subset(self, mask: np.ndarray) -> ScoredPairs:
        pick = lambda both: (both[0][mask], both[1][mask]) if both is not None else None  # noqa: E731
        kept = [p for p, keep in zip(self.pairs, mask, strict=True) if keep]
        return ScoredPairs(
            kept,
            pick(self.model),
            pick(self.heuristic),
            pick(self.hybrid),
            pick(self.length),
            pick(self.empty),
            pick(self.refusal),
        )


def pair_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float | None:
    """Share of pairs scored chosen > rejected, a tie counting half; None for no pairs."""
    if len(chosen) == 0:
        return None
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def calibration(chosen: np.ndarray, rejected: np.ndarray) -> list[dict]:
    """Per bucket of sigmoid(|gap|): pairs, mean predicted probability, share ordered correctly."""
    gap = chosen - rejected
    confidence = 1.0 / (1.0 + np.exp(-np.abs(gap)))
    buckets = []
    for low, high in zip(CALIBRATION_EDGES[:-1], CALIBRATION_EDGES[1:], strict=True):
        inside = (confidence >= low) & ((confidence < high) | (high == CALIBRATION_EDGES[-1]))
        n = int(inside.sum())
        buckets.append(
            {
                "low": low,
                "high": high,
                "n": n,
                "predicted": float(confidence[inside].mean()) if n else None,
                "accuracy": float((gap[inside] > 0).mean()) if n else None,
            }
        )
    return buckets


def length_masks(scored: ScoredPairs) -> dict[str, np.ndarray]:
    chosen_len, rejected_len = scored.length
    longest = np.maximum(np.maximum(chosen_len, rejected_len), 1)
    return {
        "length_matched": np.abs(chosen_len - rejected_len) <= LENGTH_MATCH_TOLERANCE * longest,
        "chosen_shorter": chosen_len < rejected_len,
    }


def group_report(scored: ScoredPairs) -> dict:
    chosen_len, rejected_len = scored.length
    shorter = pair_accuracy(-chosen_len, -rejected_len)
    longer = pair_accuracy(chosen_len, rejected_len)
    masks = length_masks(scored)
    accuracy = {
        "model": pair_accuracy(*scored.model),
        "heuristic": pair_accuracy(*scored.heuristic),
        "hybrid": pair_accuracy(*scored.hybrid),
        "shorter_wins": shorter,
        "longer_wins": longer,
        "best_length_rule": max(shorter, longer),
        **{name: pair_accuracy(*scored.subset(mask).model) for name, mask in masks.items()},
    }
    if scored.empty is not None:
        accuracy["beats_empty"] = pair_accuracy(scored.model[0], scored.empty[0])
        accuracy["hybrid_beats_empty"] = pair_accuracy(scored.hybrid[0], scored.empty[1])
    if scored.refusal is not None:
        accuracy |= refusal_rates(scored.model[0], scored.model[1], scored.refusal[0])
        hybrid_rates = refusal_rates(scored.hybrid[0], scored.hybrid[1], scored.refusal[1])
        accuracy |= {f"hybrid_{name}": rate for name, rate in hybrid_rates.items()}
    rewards = np.concatenate(scored.model)
    return {
        "n": len(scored.pairs),
        "n_length_matched": int(masks["length_matched"].sum()),
        "n_chosen_shorter": int(masks["chosen_shorter"].sum()),
        "accuracy": accuracy,
        "length_correlation": correlation(rewards, np.concatenate(scored.length)),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "calibration": calibration(*scored.model),
    }


def score_pairs(
    version: LoadedVersion, pairs: list[PreferencePair], heuristics: HeuristicConfig
) -> ScoredPairs:
    n = len(pairs)
    refusal_prompts, refusals = refusal_inputs(pairs)
    prompts = [p.prompt for p in pairs] * 3 + refusal_prompts
    # chosen, rejected, empty, then each pair's refusals
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs] + [""] * n + refusals
    model = backend_rewards(version.backend, prompts, responses).numpy().astype(np.float64)
    heuristic = np.array(heuristic_rewards(responses, heuristics))
    mean, std = version.calibration
    mixed = hybrid(heuristic, (model - mean) / std, *HYBRID_WEIGHTS)  # elementwise on arrays
    lengths = np.array([len(r) for r in responses], dtype=np.float64)
    halves = lambda a: (a[:n], a[n : 2 * n])  # noqa: E731
    empty = (model[2 * n : 3 * n], mixed[2 * n : 3 * n])
    refusal = tuple(a[3 * n :].reshape(n, len(REFUSALS)) for a in (model, mixed))
    return ScoredPairs(
        pairs, halves(model), halves(heuristic), halves(mixed), halves(lengths), empty, refusal
    )


def evaluate_file(version: LoadedVersion, path: str, split: str | None, heuristics: HeuristicConfig) -> dict:
    """{"all": report, "<source>": report, ...} for a file's pairs (one split of a prepared file)."""
    pairs = read_pairs(path)
    if split and any(p.split for p in pairs):
        pairs = [p for p in pairs if p.split == split]
    if not pairs:
        raise ValueError(f"{path}: no pairs to evaluate" + (f" in split {split!r}" if split else ""))
    scored = score_pairs(version, pairs, heuristics)
    sources = np.array([p.source for p in pairs])
    groups = {"all": group_report(scored)}
    for source in sorted(set(sources)):
        groups[source] = group_report(scored.subset(sources == source))
    return groups


def format_table(report: dict) -> str:
    columns = {  # accuracy key: column heading (11 characters at most)
        "model": "model",
        "heuristic": "heuristic",
        "hybrid": "hybrid",
        "shorter_wins": "shorter_win",
        "longer_wins": "longer_wins",
        "length_matched": "len_matched",
        "chosen_shorter": "chosen_shrt",
        "beats_empty": "beats_empty",
        "beats_refusal": "beats_refus",
        "refusal_beats_rejected": "refus>rejct",
    }
    header = (
        f"{'file / group':<44} {'n':>6} "
        + " ".join(f"{c:>11}" for c in columns.values())
        + f" {'len corr':>9}"
    )
    lines = [header, "-" * len(header)]
    cell = lambda v: f"{v:>11.3f}" if v is not None else f"{'-':>11}"  # noqa: E731
    for path, groups in report["files"].items():
        for name, group in groups.items():
            label = f"{Path(path).name}:{name}"[-44:]
            corr = group["length_correlation"]
            lines.append(
                f"{label:<44} {group['n']:>6} "
                + " ".join(cell(group["accuracy"].get(c)) for c in columns)
                + (f" {corr:>9.3f}" if corr is not None else f" {'-':>9}")
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-store", default=default_of("model_store"), help="model store directory")
    parser.add_argument("--version", default=None, help="version to evaluate (default: the store's CURRENT)")
    parser.add_argument(
        "--pairs", nargs="+", required=True, help="pair files (prepared, unified or HH; .gz ok)"
    )
    parser.add_argument(
        "--split",
        default="validation",
        help="in prepared files, evaluate this split only ('all' for every pair)",
    )
    parser.add_argument("--output", default=None, help="write the JSON report here")
    parser.add_argument("--plot", default=None, help="write a PNG of accuracies and calibration here")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        version_name = args.version or read_current(args.model_store)
        if version_name is None:
            raise ValueError(f"{args.model_store} has no CURRENT version; pass --version")
        version = load_version(Path(args.model_store) / version_name)
        version.backend.prepare(torch.float32, torch.device("cpu"))
        split = None if args.split == "all" else args.split
        files = {path: evaluate_file(version, path, split, HeuristicConfig()) for path in args.pairs}
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"version": version.version, "split": args.split, "files": files}
    print(f"model {version.version}, split {args.split}")
    print(format_table(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    if args.plot:
        groups = {
            f"{Path(path).name}:{name}": g
            for path, file_groups in files.items()
            for name, g in file_groups.items()
        }
        plot_evaluation(groups, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
