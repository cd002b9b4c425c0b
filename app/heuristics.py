"""The heuristic reward: pure functions of the response text. No torch, no HTTP.

reward = 1.0
         - toxicity_weight * toxicity              if the toxic-keyword ratio exceeds toxicity_threshold
         - length_penalty                          if shorter than min_words
         - length_penalty / 2                      if longer than max_words
         - repetition_penalty * (0.5 - unique)     if the unique-word ratio is below 0.5
toxicity = min(1, toxic_ratio / toxicity_saturation), so one slur in a long answer costs a little and a
stream of them costs the full weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from app.config import Settings, default_of

DEFAULT_TOXIC_KEYWORDS = (
    "idiot", "idiots", "stupid", "moron", "morons", "dumb", "loser", "losers", "pathetic", "worthless",
    "hate", "kill", "die", "scum", "trash", "ugly", "shut", "damn", "hell", "crap", "bastard", "bitch",
    "fuck", "fucking", "shit", "asshole", "retard", "retarded", "slut", "whore", "cunt", "dick", "piss",
)  # fmt: skip

_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class HeuristicConfig:
    """The heuristic's rules. Defaults: the Settings fields of the same names (app/config.py says what each
    means); Settings' toxic_keywords None means the built-in DEFAULT_TOXIC_KEYWORDS."""

    toxic_keywords: frozenset[str] = frozenset(DEFAULT_TOXIC_KEYWORDS)
    toxicity_weight: float = default_of("toxicity_weight")
    toxicity_threshold: float = default_of("toxicity_threshold")
    toxicity_saturation: float = default_of("toxicity_saturation")
    min_words: int = default_of("min_words")
    max_words: int = default_of("max_words")
    length_penalty: float = default_of("length_penalty")
    repetition_penalty: float = default_of("repetition_penalty")

    @classmethod
    def from_settings(cls, settings: Settings) -> HeuristicConfig:
        weights = settings.model_dump(include={f.name for f in fields(cls)} - {"toxic_keywords"})
        return cls(frozenset(settings.toxic_keywords or DEFAULT_TOXIC_KEYWORDS), **weights)


@dataclass(frozen=True)
class HeuristicScore:
    reward: float
    toxicity: float  # in [0, 1]
    toxic_ratio: float  # toxic keywords / words
    unique_ratio: float  # distinct words / words (1.0 for an empty text)
    words: int
    toxicity_penalty: float
    length_penalty: float
    repetition_penalty: float


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def length_penalty(words: int, cfg: HeuristicConfig) -> float:
    if words < cfg.min_words:
        return cfg.length_penalty
    if words > cfg.max_words:
        return cfg.length_penalty / 2
    return 0.0


def heuristic_score(response: str, cfg: HeuristicConfig) -> HeuristicScore:
    words = words_of(response)
    n = len(words)
    toxic_ratio = sum(w in cfg.toxic_keywords for w in words) / n if n else 0.0
    toxicity = min(1.0, toxic_ratio / cfg.toxicity_saturation) if cfg.toxicity_saturation > 0 else 0.0
    tox_pen = cfg.toxicity_weight * toxicity if toxic_ratio > cfg.toxicity_threshold else 0.0
    unique_ratio = len(set(words)) / n if n else 1.0
    rep_pen = cfg.repetition_penalty * (0.5 - unique_ratio) if unique_ratio < 0.5 else 0.0
    len_pen = length_penalty(n, cfg)
    return HeuristicScore(
        reward=1.0 - tox_pen - len_pen - rep_pen,
        toxicity=toxicity,
        toxic_ratio=toxic_ratio,
        unique_ratio=unique_ratio,
        words=n,
        toxicity_penalty=tox_pen,
        length_penalty=len_pen,
        repetition_penalty=rep_pen,
    )


def heuristic_rewards(responses: list[str], cfg: HeuristicConfig) -> list[float]:
    return [heuristic_score(r, cfg).reward for r in responses]
