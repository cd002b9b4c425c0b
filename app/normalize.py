"""Reward arithmetic: hybrid mixing, batch z-score, clipping, running statistics per namespace.

Pure numeric code plus the running-statistics snapshot (an atomic JSON file), no HTTP and no torch.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.store import write_json_atomic

SNAPSHOT_FORMAT = 1


def mixing_weights(
    alpha: float | None, beta: float | None, default: tuple[float, float]
) -> tuple[float, float]:
    """(alpha, beta) normalized to sum 1. One given weight implies the other; none gives `default`."""
    if alpha is None and beta is None:
        alpha, beta = default
    elif beta is None:
        beta = 1.0 - alpha
    elif alpha is None:
        alpha = 1.0 - beta
    total = alpha + beta
    if total <= 0:
        raise ValueError("alpha + beta must be > 0")
    return alpha / total, beta / total


def hybrid(heuristic: float, model: float, alpha: float, beta: float) -> float:
    return alpha * heuristic + beta * model


def mean_and_variance(values: Sequence[float]) -> tuple[float, float]:
    """Population mean and variance (a single value has variance 0)."""
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values) / len(values)


def standardize(values: Sequence[float], mean: float, variance: float, eps: float) -> list[float]:
    std = math.sqrt(variance)
    return [(v - mean) / (std + eps) for v in values]


def batch_zscore(values: Sequence[float], eps: float) -> list[float]:
    """(v - mean) / (std + eps) within `values`; a single value (std 0) becomes 0."""
    return standardize(values, *mean_and_variance(values), eps)


def clip(values: Sequence[float], bound: float | None) -> list[float]:
    if bound is None:
        return list(values)
    return [min(bound, max(-bound, v)) for v in values]


@dataclass
class EmaStats:
    """Exponential moving mean and variance of one namespace's rewards."""

    mean: float = 0.0
    variance: float = 0.0
    count: int = 0

    def update(self, values: Sequence[float], momentum: float) -> None:
        """Fold a request's values in as one step; the first step takes the values' own statistics."""
        batch_mean, batch_var = mean_and_variance(values)
        if self.count == 0:
            self.mean, self.variance = batch_mean, batch_var
        else:
            delta = batch_mean - self.mean
            # variance of the mixture of the old distribution and the batch, weighted momentum : 1 - momentum
            mixed = momentum * self.variance + (1 - momentum) * batch_var
            self.variance = mixed + momentum * (1 - momentum) * delta**2
            self.mean = momentum * self.mean + (1 - momentum) * batch_mean
        self.count += len(values)


class RunningStats:
    """EMA statistics per namespace, at most `max_namespaces` of them (least recently used evicted).

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, momentum: float, eps: float, max_namespaces: int):
        self.momentum = momentum
        self.eps = eps
        self.max_namespaces = max_namespaces
        self._stats: OrderedDict[str, EmaStats] = OrderedDict()

    def __len__(self) -> int:
        return len(self._stats)

    def normalize(self, namespace: str, values: Sequence[float]) -> list[float]:
        """Update the namespace with `values`, then standardize them with the updated statistics."""
        stats = self._touch(namespace)
        stats.update(values, self.momentum)
        return standardize(values, stats.mean, stats.variance, self.eps)

    def get(self, namespace: str) -> EmaStats | None:
        return self._stats.get(namespace)

    def reset(self, namespace: str) -> bool:
        return self._stats.pop(namespace, None) is not None

    def _touch(self, namespace: str) -> EmaStats:
        stats = self._stats.pop(namespace, None) or EmaStats()
        self._put(namespace, stats)
        return stats

    def _put(self, namespace: str, stats: EmaStats) -> None:
        self._stats[namespace] = stats
        while len(self._stats) > self.max_namespaces:
            self._stats.popitem(last=False)

    def to_dict(self) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "momentum": self.momentum,
            "namespaces": {name: asdict(stats) for name, stats in self._stats.items()},
        }

    def load_dict(self, data: dict) -> None:
        """Restore namespaces from `to_dict()` output, oldest first, keeping the newest `max_namespaces`."""
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"running-stats snapshot format {data.get('format')!r}, expected {SNAPSHOT_FORMAT}"
            )
        for name, fields in data["namespaces"].items():
            stats = EmaStats(float(fields["mean"]), float(fields["variance"]), int(fields["count"]))
            if math.isfinite(stats.mean) and math.isfinite(stats.variance) and stats.variance >= 0:
                self._put(name, stats)

    def restore(self, path: Path) -> bool:
        """Load a snapshot if the file exists; False when there is none."""
        if not path.is_file():
            return False
        self.load_dict(json.loads(path.read_text()))
        return True


def write_snapshot(path: Path, snapshot: dict) -> None:
    """Write `RunningStats.to_dict()` output atomically: a crash leaves the old snapshot or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, snapshot)
