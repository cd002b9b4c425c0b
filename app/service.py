"""ScoringService: the scoring pipeline, callable without HTTP.

pairs -> limits -> one model version -> admission (a small thread pool, per request: exact token ids and
the heuristic; a text that cannot be encoded is this request's 422) -> micro-batcher (exact token counts;
compute pool: forward, calibration) -> hybrid reward -> normalization -> clipping -> response schema.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields

from app.admission import FAST_REFUSAL, Admission, AdmissionPolicy, PairPayload, TextLocator
from app.backends.warmup import CANARY_PAIRS
from app.batcher import MicroBatcher
from app.config import NormalizeMode, Settings
from app.errors import InferenceError, InvalidInput, NotReady
from app.heuristics import HeuristicScore
from app.metrics import ServiceMetrics
from app.normalize import RunningStats, batch_zscore, clip, hybrid, mixing_weights
from app.registry import ModelRegistry
from app.schemas import HeuristicParts, ItemScore, Pair, ScoreBatchResponse, ScoreOptions
from app.store import LoadedVersion

log = logging.getLogger(__name__)
MODEL_FAILED = "the model cannot serve: it fails its known-good canary input too (see the server log)"


@dataclass(frozen=True)
class ScoringDefaults:
    """Server-side defaults and limits of a scoring request: the Settings fields of the same names
    (app/config.py says what each means and holds its default)."""

    alpha: float
    beta: float
    normalize: NormalizeMode
    clip: float | None
    max_items: int
    max_text_chars: int
    unready_after_failures: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ScoringDefaults:
        return cls(**settings.model_dump(include={f.name for f in fields(cls)}))


@dataclass(frozen=True)
class ItemParts:
    """What the worker thread computes for one item."""

    model_raw: float
    model_reward: float  # calibrated: (raw - reward_mean) / reward_std
    heuristic: HeuristicScore


class ModelHealth:
    """Failures that are the model's, for readiness: a forward pass whose items all failed and after which
    the version's known-good canary failed too. A failure that only some inputs cause (a client's) never
    counts: it proves the model still serves."""

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.failing_version: str | None = None
        self._lock = threading.Lock()  # compute workers record side by side

    def record(self, version: LoadedVersion, model_failed: bool) -> None:
        with self._lock:
            if model_failed:
                self.consecutive_failures += 1
                self.failing_version = version.version
            else:
                self.consecutive_failures = 0


class BatchScorer:
    """The batcher's `run_batch`: runs in the worker thread on items of one version. An input-dependent
    failure is raised (the batcher then isolates the items at fault); a model that fails its canary too
    fails the whole batch at once and is recorded in `health`."""

    def __init__(self, health: ModelHealth):
        self.health = health

    def __call__(self, payloads: list[PairPayload]) -> list[ItemParts | InferenceError]:
        version = payloads[0].version
        if any(p.version is not version for p in payloads):
            raise RuntimeError("a micro-batch mixes model versions; the batcher must group by version")
        try:
            raw = version.backend.forward([p.ids for p in payloads])
        except Exception:
            if self._model_failed(version, all_failed=True):
                return [InferenceError(MODEL_FAILED)] * len(payloads)
            raise
        self._model_failed(version, all_failed=not any(math.isfinite(r) for r in raw))
        mean, std = version.calibration
        return [
            ItemParts(r, (r - mean) / std, p.heuristic) if math.isfinite(r)
            else InferenceError(f"the model gave a non-finite reward ({r}) for this item (corrupt weights?)")
            for r, p in zip(raw, payloads, strict=True)
        ]  # fmt: skip

    def _model_failed(self, version: LoadedVersion, all_failed: bool) -> bool:
        """Record whether a batch failed because of the model: only when all its items failed is the
        canary run (one short pair that passed the warm-up)."""
        failed = all_failed and not canary_passes(version)
        self.health.record(version, failed)
        return failed


def canary_passes(version: LoadedVersion) -> bool:
    prompt, response = CANARY_PAIRS[0]
    try:
        return all(
            math.isfinite(r) for r in version.backend.forward(version.backend.encode([prompt], [response]))
        )
    except Exception:
        log.exception("model version %s fails its canary input", version.version)
        return False


def check_limits(
    pairs: Sequence[Pair], defaults: ScoringDefaults, locate: TextLocator, max_items: int
) -> None:
    """Refuse too many items or too long texts, naming each field at fault and the limit."""
    if len(pairs) > max_items:
        raise InvalidInput(
            f"too many items: {len(pairs)} > max_items {max_items}",
            [
                {
                    "loc": ["body", "items"],
                    "msg": "too many items",
                    "limit": max_items,
                    "got": len(pairs),
                }
            ],
        )
    details = [
        {"loc": locate(index, name), "msg": "text too long", "limit": defaults.max_text_chars,
         "got": len(text)}
        for index, pair in enumerate(pairs)
        for name, text in (("prompt", pair.prompt), ("response", pair.response))
        if len(text) > defaults.max_text_chars
    ]  # fmt: skip
    if details:
        raise InvalidInput(f"text longer than max_text_chars {defaults.max_text_chars} characters", details)


class ScoringService:
    def __init__(
        self,
        registry: ModelRegistry,
        batcher: MicroBatcher,
        admission: Admission,
        health: ModelHealth,
        running_stats: RunningStats,
        defaults: ScoringDefaults,
        metrics: ServiceMetrics | None = None,
    ):
        self.registry = registry
        self.batcher = batcher
        self.admission = admission
        self.health = health
        self.running_stats = running_stats
        self.defaults = defaults
        self.metrics = metrics or ServiceMetrics()

    def live_version(self) -> LoadedVersion:
        version = self.registry.current
        if version is None:
            raise NotReady(
                f"no model loaded yet ({self.registry.last_error or 'loading'})", self.defaults.retry_after_s
            )
        return version

    def check_ready(self) -> LoadedVersion:
        """The live version; NotReady when there is none or its latest batches failed by its own fault."""
        version = self.live_version()
        failures = self.health.consecutive_failures
        if (
            failures >= self.defaults.unready_after_failures
            and self.health.failing_version == version.version
        ):
            raise NotReady(
                f"the model cannot serve: its last {failures} batches failed (see the server log)",
                self.defaults.retry_after_s,
            )
        return version

    async def score(
        self,
        pairs: Sequence[Pair],
        options: ScoreOptions,
        locate: TextLocator,
        policy: AdmissionPolicy = FAST_REFUSAL,
        max_items: int | None = None,
    ) -> ScoreBatchResponse:
        """Score pairs with one model version; `locate` says where the request holds each text.
        Per route: `policy` says how a busy server admits them (trainers that cannot back off wait),
        `max_items` replaces the default item limit (a whole rollout in one request)."""
        check_limits(pairs, self.defaults, locate, max_items or self.defaults.max_items)
        version = self.live_version()  # captured once: every item of this request uses it
        self.batcher.check_admission(policy)  # refused before anything is spent on it when the queue is long
        with self.batcher.incoming():  # the batcher waits for these items rather than start without them
            payloads = await self.admission.encode(version, pairs, locate, policy)
        lengths = [len(p.ids) for p in payloads]
        parts: list[ItemParts] = await self.batcher.run(
            payloads, lengths, id(version), policy, version.backend.packs_inputs
        )
        return self._finish(parts, options, version.version, sum(lengths))

    def _finish(
        self, parts: list[ItemParts], options: ScoreOptions, version: str, tokens: int
    ) -> ScoreBatchResponse:
        alpha, beta = mixing_weights(options.alpha, options.beta, (self.defaults.alpha, self.defaults.beta))
        mode = options.normalize or self.defaults.normalize
        bound = options.clip if options.clip is not None else self.defaults.clip
        hybrids = [hybrid(p.heuristic.reward, p.model_reward, alpha, beta) for p in parts]
        self._observe_rewards(parts, hybrids)
        normalized = self._normalize(mode, options.namespace, hybrids)
        rewards = clip(normalized, bound)
        items = [
            item_score(p, h, n, r) for p, h, n, r in zip(parts, hybrids, normalized, rewards, strict=True)
        ]
        return ScoreBatchResponse(
            model_version=version, alpha=alpha, beta=beta, normalize=mode, namespace=options.namespace,
            clip=bound, rewards=rewards, items=items, input_tokens=tokens,
        )  # fmt: skip

    def _observe_rewards(self, parts: list[ItemParts], hybrids: list[float]) -> None:
        """Reward distributions before normalization: a drifting model or policy shows here."""
        self.metrics.observe_rewards("hybrid", hybrids)
        self.metrics.observe_rewards("model", [p.model_reward for p in parts])
        self.metrics.observe_rewards("heuristic", [p.heuristic.reward for p in parts])

    def _normalize(self, mode: str, namespace: str, values: list[float]) -> list[float]:
        if mode == "batch":
            return batch_zscore(values, self.running_stats.eps)
        if mode == "running":
            return self.running_stats.normalize(namespace, values)
        return list(values)


def item_score(parts: ItemParts, hybrid_reward: float, normalized: float, reward: float) -> ItemScore:
    h = parts.heuristic
    return ItemScore(
        reward=reward,
        model_raw=parts.model_raw,
        model_reward=parts.model_reward,
        heuristic_reward=h.reward,
        hybrid_reward=hybrid_reward,
        normalized_reward=normalized,
        heuristic=HeuristicParts(
            toxicity=h.toxicity, words=h.words, unique_ratio=h.unique_ratio,
            toxicity_penalty=h.toxicity_penalty, length_penalty=h.length_penalty,
            repetition_penalty=h.repetition_penalty,
        ),
    )  # fmt: skip
