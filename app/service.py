"""ScoringService: the scoring pipeline, callable without HTTP.

pairs -> limits -> one model version -> micro-batcher (worker thread: tokenize, forward, heuristic,
calibration) -> hybrid reward -> normalization -> clipping -> response schema.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.batcher import MicroBatcher
from app.errors import InferenceError, InvalidInput, NotReady
from app.heuristics import DEFAULT_TOXIC_KEYWORDS, HeuristicConfig, HeuristicScore, heuristic_score
from app.metrics import ServiceMetrics
from app.normalize import RunningStats, batch_zscore, clip, hybrid, mixing_weights
from app.registry import ModelRegistry
from app.schemas import HeuristicParts, ItemScore, Pair, ScoreBatchResponse, ScoreOptions
from app.store import LoadedVersion

CHARS_PER_TOKEN = 4  # length estimate before tokenization, for sorting and the token budget
SPECIAL_TOKENS_PER_PAIR = 3  # CLS, SEP, SEP


@dataclass(frozen=True)
class ScoringDefaults:
    """Server-side defaults and limits of a scoring request."""

    alpha: float = 0.5
    beta: float = 0.5
    normalize: str = "none"
    clip: float | None = None
    max_items: int = 256
    max_text_chars: int = 20000
    unready_after_failures: int = 3  # batches in a row that all failed before /readyz says 503


@dataclass(frozen=True)
class PairPayload:
    """One item on its way through the batcher, pinned to the version its request captured."""

    prompt: str
    response: str
    version: LoadedVersion


@dataclass(frozen=True)
class ItemParts:
    """What the worker thread computes for one item."""

    model_raw: float
    model_reward: float  # calibrated: (raw - reward_mean) / reward_std
    heuristic: HeuristicScore


def heuristic_config(keywords: Sequence[str] | None = None, **weights: float | int) -> HeuristicConfig:
    """HeuristicConfig from settings-style values; no keywords means the built-in list."""
    return HeuristicConfig(toxic_keywords=frozenset(keywords or DEFAULT_TOXIC_KEYWORDS), **weights)


class BatchScorer:
    """The batcher's `run_batch`: runs in the worker thread on items of one version."""

    def __init__(self, heuristics: HeuristicConfig):
        self.heuristics = heuristics

    def __call__(self, payloads: list[PairPayload]) -> list[ItemParts | InferenceError]:
        version = payloads[0].version
        if any(p.version is not version for p in payloads):
            raise RuntimeError("a micro-batch mixes model versions; the batcher must group by version")
        raw = version.backend.forward(
            version.backend.encode([p.prompt for p in payloads], [p.response for p in payloads])
        )
        mean, std = version.calibration
        return [
            ItemParts(r, (r - mean) / std, heuristic_score(p.response, self.heuristics)) if math.isfinite(r)
            else InferenceError(f"the model gave a non-finite reward ({r}) for this item (corrupt weights?)")
            for r, p in zip(raw, payloads, strict=True)
        ]  # fmt: skip


def estimate_tokens(pair: Pair, max_len: int) -> int:
    chars = len(pair.prompt) + len(pair.response)
    return min(max_len, chars // CHARS_PER_TOKEN + SPECIAL_TOKENS_PER_PAIR)


def text_loc(index: int, name: str, batch: bool) -> list:
    return ["body", "items", index, name] if batch else ["body", name]


def check_limits(pairs: Sequence[Pair], defaults: ScoringDefaults, batch: bool) -> None:
    """Refuse too many items or too long texts, naming each field at fault and the limit."""
    if len(pairs) > defaults.max_items:
        raise InvalidInput(
            f"too many items: {len(pairs)} > max_items {defaults.max_items}",
            [
                {
                    "loc": ["body", "items"],
                    "msg": "too many items",
                    "limit": defaults.max_items,
                    "got": len(pairs),
                }
            ],
        )
    details = [
        {"loc": text_loc(index, name, batch), "msg": "text too long", "limit": defaults.max_text_chars,
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
        running_stats: RunningStats,
        defaults: ScoringDefaults,
        metrics: ServiceMetrics | None = None,
    ):
        self.registry = registry
        self.batcher = batcher
        self.running_stats = running_stats
        self.defaults = defaults
        self.metrics = metrics or ServiceMetrics()

    def live_version(self) -> LoadedVersion:
        version = self.registry.current
        if version is None:
            raise NotReady(f"no model loaded yet ({self.registry.last_error or 'loading'})")
        return version

    def check_ready(self) -> LoadedVersion:
        """The live version; NotReady when there is none or its latest batches all failed."""
        version = self.live_version()
        failures = self.batcher.consecutive_failures
        if failures >= self.defaults.unready_after_failures and self.batcher.failing_group == id(version):
            raise NotReady(f"the model cannot serve: its last {failures} batches failed (see the server log)")
        return version

    async def score(self, pairs: Sequence[Pair], options: ScoreOptions, batch: bool) -> ScoreBatchResponse:
        """Score pairs with one model version; `batch` says whether they came as /score_batch items."""
        check_limits(pairs, self.defaults, batch)
        version = self.live_version()  # captured once: every item of this request uses it
        payloads = [PairPayload(p.prompt, p.response, version) for p in pairs]
        lengths = [estimate_tokens(p, version.backend.max_len) for p in pairs]
        parts: list[ItemParts] = await self.batcher.run(payloads, lengths, group=id(version))
        return self._finish(parts, options, version.version)

    def _finish(self, parts: list[ItemParts], options: ScoreOptions, version: str) -> ScoreBatchResponse:
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
            clip=bound, rewards=rewards, items=items,
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
