"""The native backend: the encoder this project trains (`app.model.RewardModel`) and its `tokenizer.json`.

`encode` runs the Rust tokenizer over a whole request at once and, only when that fails, looks for the
pair at fault so that it alone is refused. `forward` pads one micro-batch to its longest member (inputs
sorted by length first: the nested-tensor fast path skips the padding) and runs one forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from app.backends import EncodeError
from app.errors import CheckpointError
from app.model import RewardModel
from app.tokenizer import PairTokenizer

MIN_MAX_LEN = 8  # tokens: CLS, two SEPs and a few of text on each side
# a str decoded from JSON holds a surrogate code point only when it was unpaired ("\ud800" alone)
_SURROGATE = re.compile("[\ud800-\udfff]")


def why_unencodable(text: str) -> str:
    """A client-facing reason why the tokenizer refused `text`."""
    found = _SURROGATE.search(text)
    if found:
        return f"unpaired UTF-16 surrogate U+{ord(found.group()):04X} at character {found.start()}"
    return "the tokenizer cannot encode this text"


class NativeBackend:
    """RewardBackend over a RewardModel and the PairTokenizer it was trained with."""

    kind = "native"

    def __init__(self, model: RewardModel, tokenizer: PairTokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def max_len(self) -> int:
        return self.tokenizer.spec.max_len

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        try:
            return self.tokenizer.encode_pairs(prompts, responses)
        except (TypeError, ValueError, UnicodeError) as exc:
            raise self._find_unencodable(prompts, responses) from exc

    def _find_unencodable(self, prompts: Sequence[str], responses: Sequence[str]) -> EncodeError:
        """The first text the tokenizer refuses, as an EncodeError (one text at a time: failures only)."""
        for index, pair in enumerate(zip(prompts, responses, strict=True)):
            for field, text in zip(("prompt", "response"), pair, strict=True):
                try:
                    self.tokenizer.encode_pairs([text], [""])
                except (TypeError, ValueError, UnicodeError):
                    return EncodeError(index, field, why_unencodable(text))
        return EncodeError(0, "prompt", "the tokenizer refused this batch")

    def forward(self, ids: Sequence[Sequence[int]]) -> list[float]:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        input_ids, mask = self.tokenizer.pad([ids[i] for i in order])  # (B, T) each
        if self.device.type == "cuda":  # page-locked host memory: the copies run asynchronously
            input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
            mask = mask.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            sorted_out = self.model(input_ids, mask).float().cpu().tolist()  # (B,); .cpu() synchronizes
        raw = [0.0] * len(ids)
        for position, index in enumerate(order):
            raw[index] = sorted_out[position]
        return raw

    def prepare(self, dtype: torch.dtype) -> None:
        """Check that the encoding fits the model, then eval mode (no dropout; the nested-tensor fast path)
        with the encoder in `dtype`; the reward head, a tiny MLP, stays in float32 so rewards keep their
        precision (see RewardHead)."""
        check_compatible(self.model, self.tokenizer)
        self.model.to(dtype=dtype).eval()
        self.model.head.float()


def check_compatible(model: RewardModel, tokenizer: PairTokenizer) -> None:
    """Refuse an encoding this backend cannot feed to the model: a pair must fit the position table,
    leave room for text beside the three special tokens, and pad with the id the model masks."""
    spec, cfg = tokenizer.spec, model.cfg
    problems = []
    if not MIN_MAX_LEN <= spec.max_len <= cfg.max_len:
        problems.append(f"encoding max_len {spec.max_len} is not in [{MIN_MAX_LEN}, {cfg.max_len}] (model's)")
    if tokenizer.pad_id != cfg.pad_id:
        problems.append(f"tokenizer pads with id {tokenizer.pad_id}, the model masks id {cfg.pad_id}")
    if problems:
        raise CheckpointError(f"incompatible config: {'; '.join(problems)}")
