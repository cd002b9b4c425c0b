"""Synthetic negatives: a chosen response made worse in a known way, so the model learns content, not length.

Each kind damages the text differently and moves its length in a different direction (loops make it
longer, truncation shorter, shuffling and off-topic keep it about the same), so no kind can be learned
as "longer wins" or "shorter wins". The `empty` kind is no answer at all: on data where the shorter
answer tends to win (harmlessness: refusals), a model left alone rates silence above most real answers,
which a policy would learn to exploit. The `refusal` kind is the other cheap exploit: a generic refusal
to a benign request (never to a prompt of a harmlessness source, where refusing is often the right
answer). Its wordings are not those the evaluation's refusal check uses (app/training/refusal.py), so
that check measures whether the model generalizes to refusals it was not shown.

One kind is a positive, made only when asked for (`OPT_IN_KINDS`): `refusal_over_harm` pairs a generic
refusal, as the chosen answer, with the rejected (the more harmful) answer to a prompt of a harmlessness
source. It is the counterpart of `refusal`: refusals are learned as bad where the request is benign and
as better than complying where it is harmful, not as bad everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from app.training.pairs import PreferencePair

MIN_WORDS = 6  # shorter chosen responses are too small to perturb meaningfully
MAX_WORDS = 60  # longer ones would be perturbed past what a 128-token input shows, making invisible negatives
SYNTHETIC_SOURCE = "synthetic"
# every phrase holds a word of app.heuristics.DEFAULT_TOXIC_KEYWORDS, so the heuristic sees it too
TOXIC_PHRASES = tuple(f"you {word}" for word in ("idiot", "moron", "loser", "pathetic", "worthless")) + (
    "shut up",
    "I hate you",
    "what a stupid question",
    "go to hell",
    "this is crap",
    "damn it",
    "screw you, you ugly bastard",
)
# sources of harmful requests, where a refusal may be the better answer: no refusal negatives there
HARMFUL_SOURCES = frozenset({"hh_harmless_base"})
TRAINING_REFUSALS = (
    "I'm afraid I can't help you with this.",
    "Sorry, I won't be able to do that.",
    "I cannot assist with this request.",
    "Unfortunately, that's not something I can help with.",
    "I'm not able to answer that, sorry.",
    "Apologies, but I can't provide that.",
    "I'd rather not help with that request.",
    "Sorry, that's outside what I can do for you.",
)


def repetition_loop(words: list[str], rng: random.Random) -> str:
    """Keep a prefix, then loop one short phrase of it, as a degenerate sampler does."""
    start = rng.randrange(0, max(1, len(words) // 2))
    phrase = words[start : start + rng.randint(2, 6)]
    return " ".join(words[: start + len(phrase)] + phrase * rng.randint(4, 10))


def truncation(words: list[str], rng: random.Random) -> str:
    """Cut mid-sentence, keeping 20-60% of the words."""
    keep = max(1, int(len(words) * rng.uniform(0.2, 0.6)))
    return " ".join(words[:keep])


def toxic_insertion(words: list[str], rng: random.Random) -> str:
    out = list(words)
    for _ in range(rng.randint(1, 3)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(TOXIC_PHRASES) + ",")
    return " ".join(out)


def shuffled_words(words: list[str], rng: random.Random) -> str:
    out = list(words)
    while out == words:
        rng.shuffle(out)
    return " ".join(out)


def empty_answer(words: list[str], rng: random.Random) -> str:
    """Nothing: the policy stopped at once."""
    return ""


def refusal(words: list[str], rng: random.Random) -> str:
    """A generic refusal in place of the answer (only built on benign prompts: see `synthesize`)."""
    return rng.choice(TRAINING_REFUSALS)


PERTURBATIONS: dict[str, Callable[[list[str], random.Random], str]] = {
    "repetition": repetition_loop,
    "truncation": truncation,
    "toxic": toxic_insertion,
    "shuffle": shuffled_words,
    "empty": empty_answer,
    "refusal": refusal,
}
KINDS = (*PERTURBATIONS, "off_topic")
OPT_IN_KINDS = ("refusal_over_harm",)  # made only when named in `kinds`


def make_negative(
    base: PreferencePair, kind: str, others: Sequence[PreferencePair], rng: random.Random
) -> str | None:
    """The rejected response of a synthetic pair of `kind` built on `base.chosen`; None when none fits."""
    if kind == "off_topic":
        candidates = [p.chosen for p in (rng.choice(others) for _ in range(8)) if p.prompt != base.prompt]
        return candidates[0] if candidates else None
    return PERTURBATIONS[kind](base.chosen.split(), rng)


def synthesize(
    pairs: Sequence[PreferencePair], count: int, seed: int, kinds: Sequence[str] = KINDS
) -> list[PreferencePair]:
    """Up to `count` synthetic pairs, kinds in rotation, each in the same split as the prompt it reuses
    (`refusal` pairs are skipped when every base prompt is from a harmlessness source)."""
    rng = random.Random(seed)
    bases = [p for p in pairs if p.kind == "real" and MIN_WORDS <= len(p.chosen.split()) <= MAX_WORDS]
    unknown = set(kinds) - set(KINDS) - set(OPT_IN_KINDS)
    if unknown or not kinds:
        known = ", ".join((*KINDS, *OPT_IN_KINDS))
        raise ValueError(f"unknown synthetic kinds {sorted(unknown)}; choose from {known}")
    if count and not bases and set(kinds) - set(OPT_IN_KINDS):
        raise ValueError(f"no chosen response has {MIN_WORDS}-{MAX_WORDS} words to perturb into negatives")
    benign = [p for p in bases if p.source not in HARMFUL_SOURCES]
    harmful = [p for p in pairs if p.kind == "real" and p.source in HARMFUL_SOURCES and p.rejected.strip()]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        candidates = {"refusal": benign, "refusal_over_harm": harmful}.get(kind, bases)
        if not candidates:
            continue
        base = rng.choice(candidates)
        if kind == "refusal_over_harm":
            chosen = rng.choice(TRAINING_REFUSALS)
            out.append(PreferencePair(base.prompt, chosen, base.rejected, SYNTHETIC_SOURCE, kind, base.split))
            continue
        rejected = make_negative(base, kind, bases, rng)
        if rejected is not None and rejected != base.chosen:
            out.append(PreferencePair(base.prompt, base.chosen, rejected, SYNTHETIC_SOURCE, kind, base.split))
    return out
