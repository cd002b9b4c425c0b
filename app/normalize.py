"""Reward arithmetic: hybrid mixing, batch z-score, clipping, running statistics per namespace.

Pure numeric code plus the running-statistics snapshot (an atomic JSON file), no HTTP and no torch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.errors import Overloaded
from app.store import write_json_atomic

log = logging.getLogger(__name__)

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
    """Population mean and variance (a single value has variance 0). Needs at least one value; values
    near the float limit give an infinite variance, never an OverflowError."""
    n = len(values)
    try:
        mean = math.fsum(values) / n
    except OverflowError:  # the sum leaves the float range; the mean does not
        mean = math.fsum(v / n for v in values)
    return mean, math.fsum((v - mean) * (v - mean) for v in values) / n


def standardize(values: Sequence[float], mean: float, variance: float, eps: float) -> list[float]:
    std = math.sqrt(variance)
    return [(v - mean) / (std + eps) for v in values]


def batch_zscore(values: Sequence[float], eps: float) -> list[float]:
    """(v - mean) / (std + eps) within `values`; a single value (std 0) becomes 0, no values give []."""
    if not values:
        return []
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

    def updated(self, values: Sequence[float], momentum: float) -> EmaStats:
        """These statistics with a request's values folded in as one step (the first step takes the
        values' own statistics). Needs at least one value."""
        batch_mean, batch_var = mean_and_variance(values)
        if self.count == 0:
            return EmaStats(batch_mean, batch_var, len(values))
        delta = batch_mean - self.mean
        # variance of the mixture of the old distribution and the batch, weighted momentum : 1 - momentum
        mixed = momentum * self.variance + (1 - momentum) * batch_var
        return EmaStats(
            momentum * self.mean + (1 - momentum) * batch_mean,
            mixed + momentum * (1 - momentum) * delta * delta,  # not delta**2: that raises on overflow
            self.count + len(values),
        )

    @property
    def sane(self) -> bool:
        return math.isfinite(self.mean) and math.isfinite(self.variance) and self.variance >= 0


class NamespacesFull(Overloaded):
    """Every namespace slot holds a run used within the idle age; a new namespace must wait or be reset."""


class RunningStats:
    """EMA statistics per namespace, at most `max_namespaces` of them.

    A namespace exists once a non-empty request has updated it. When the table is full, a new namespace
    takes the slot of the least recently used one only if that one has been idle for `idle_evict_s`;
    otherwise the new namespace is refused (NamespacesFull, a 429), so no client can push a live run's
    statistics out by inventing namespaces. Values that are not finite never enter the statistics.
    Used from the event loop only, so it needs no lock.
    """

    def __init__(
        self,
        momentum: float,
        eps: float,
        max_namespaces: int,
        idle_evict_s: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.momentum = momentum
        self.eps = eps
        self.max_namespaces = max_namespaces
        self.idle_evict_s = idle_evict_s
        self.clock = clock
        self._stats: OrderedDict[str, EmaStats] = OrderedDict()  # least recently used first
        self._last_used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._stats)

    def normalize(self, namespace: str, values: Sequence[float]) -> list[float]:
        """Update the namespace with `values`, then standardize them with the updated statistics.

        No values: nothing to update and nothing created. Non-finite values are standardized with the
        statistics but never folded into them."""
        finite = [v for v in values if math.isfinite(v)]
        stats = self._stats.get(namespace, EmaStats())
        if finite:
            candidate = stats.updated(finite, self.momentum)
            if candidate.sane:  # huge values can overflow the variance to infinity
                stats = candidate
                self._store(namespace, stats)
        return standardize(values, stats.mean, stats.variance, self.eps)

    def get(self, namespace: str) -> EmaStats | None:
        return self._stats.get(namespace)

    def reset(self, namespace: str) -> bool:
        self._last_used.pop(namespace, None)
        return self._stats.pop(namespace, None) is not None

    def _store(self, namespace: str, stats: EmaStats) -> None:
        if namespace not in self._stats and len(self._stats) >= self.max_namespaces:
            self._evict_idle()
        self._stats.pop(namespace, None)
        self._stats[namespace] = stats
        self._last_used[namespace] = self.clock()

    def _evict_idle(self) -> None:
        oldest = next(iter(self._stats))
        idle = self.clock() - self._last_used[oldest]
        if idle < self.idle_evict_s:
            raise NamespacesFull(
                f"all {self.max_namespaces} running-statistics namespaces were used within the last "
                f"{self.idle_evict_s:g} s; reuse a namespace, reset one (DELETE /v1/stats/<namespace>) "
                "or retry later",
                retry_after=max(1, math.ceil(self.idle_evict_s - idle)),
            )
        self.reset(oldest)

    def to_dict(self) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "momentum": self.momentum,
            "namespaces": {name: asdict(stats) for name, stats in self._stats.items() if stats.sane},
        }

    def load_dict(self, data: object) -> int:
        """Restore namespaces from `to_dict()` output, oldest first, keeping the newest `max_namespaces`;
        a restored namespace counts as used now. Malformed entries are skipped: returns how many."""
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"running-stats snapshot format {found!r}, expected {SNAPSHOT_FORMAT}")
        namespaces = data.get("namespaces")
        if not isinstance(namespaces, dict):
            raise ValueError(
                f"running-stats snapshot: namespaces is {type(namespaces).__name__}, not an object"
            )
        skipped = 0
        for name, fields in namespaces.items():
            stats = parse_ema_stats(fields)
            if stats is None or not isinstance(name, str):
                skipped += 1
                continue
            self._stats.pop(name, None)
            self._stats[name] = stats
            self._last_used[name] = self.clock()
            while len(self._stats) > self.max_namespaces:
                self.reset(next(iter(self._stats)))
        return skipped

    def restore(self, path: Path) -> bool:
        """Load a snapshot if the file exists; False when there is none. Raises ValueError if unusable."""
        if not path.is_file():
            return False
        skipped = self.load_dict(json.loads(path.read_text()))
        if skipped:
            log.warning("running-stats snapshot %s: skipped %d malformed namespaces", path, skipped)
        return True


def parse_ema_stats(fields: object) -> EmaStats | None:
    """One snapshot entry as EmaStats, or None unless it holds a finite mean, a finite variance >= 0
    and a whole count >= 1 (a count of 1e400 parses as infinity, NaN as NaN: both are refused)."""
    if not isinstance(fields, dict):
        return None
    mean, variance, count = fields.get("mean"), fields.get("variance"), fields.get("count")
    numbers = (mean, variance)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
        return None
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return None
    stats = EmaStats(float(mean), float(variance), count)
    return stats if stats.sane else None


def write_snapshot(path: Path, snapshot: dict) -> None:
    """Write `RunningStats.to_dict()` output atomically: a crash leaves the old snapshot or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, snapshot, allow_nan=False)
