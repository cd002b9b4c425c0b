"""Warm-up checks of a loaded version: fixed canary inputs scored alone and together must give finite
rewards that do not depend on the batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from app.errors import CheckpointError

if TYPE_CHECKING:
    from app.store import LoadedVersion

# fixed inputs of the warm-up forward: short, ordinary, empty-ish and longer than most models' max_len
CANARY_PAIRS = (
    ("How do I boil an egg?", "Put it in boiling water for about eight minutes, then cool it in cold water."),
    ("Hi", "Hello! How can I help you today?"),
    ("?", "."),
    ("Tell me a long story. " * 40, "Once upon a time there was a reward model. " * 60),
)


def forward_raw(version: LoadedVersion, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Raw model outputs for pairs, in input order (encode and forward in one call: warm-up, benchmarks)."""
    return version.backend.forward(version.backend.encode(prompts, responses))


def warm_up(version: LoadedVersion, dtype: torch.dtype) -> None:
    """Score the canary pairs alone and together; refuse non-finite or batch-dependent rewards."""
    prompts, responses = zip(*CANARY_PAIRS, strict=True)
    together = forward_raw(version, prompts, responses)
    alone = [forward_raw(version, [p], [r])[0] for p, r in CANARY_PAIRS]
    if not all(math.isfinite(x) for x in together + alone):
        raise CheckpointError(f"version {version.version}: non-finite rewards on canary inputs: {together}")
    drift = max(abs(a - b) for a, b in zip(together, alone, strict=True))
    # a few units in the last place of the compute dtype (bf16: 2^-7) are rounding, not a batching bug
    eps = version.execution.path.eps if version.execution else torch.finfo(dtype).eps
    if drift > max(1e-3, 4 * eps) * max(1.0, max(abs(x) for x in alone)):
        raise CheckpointError(f"version {version.version}: rewards change with batching (by {drift:.3g})")
