"""The native backend: the encoder this project trains (`app.model.RewardModel`) and its `tokenizer.json`.

`encode` runs the Rust tokenizer over a whole request at once and, only when that fails, looks for the
pair at fault so that it alone is refused. `forward` runs one forward pass per micro-batch: on a CPU over
the inputs packed without padding (`RewardModel.forward_packed`), on an accelerator padded to the longest
member (inputs sorted by length first: the nested-tensor fast path skips the padding).

On a CPU in bfloat16 or float16, oneDNN compiles matrix-multiply kernels for each new shape (a few
milliseconds each) and keeps a bounded cache of them; a server sees a new token count almost every
batch. The packed rows are therefore grown to the next of a few fixed counts (`packed_rows`), so that
the shapes repeat and their kernels stay cached; float32 kernels are not compiled per shape, so float32
runs on the exact count.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import torch

from app.backends import EncodeError
from app.errors import CheckpointError
from app.model import RewardModel, packed_layers
from app.tokenizer import PairTokenizer

MIN_MAX_LEN = 8  # tokens: CLS, two SEPs and a few of text on each side
# a str decoded from JSON holds a surrogate code point only when it was unpaired ("\ud800" alone)
_SURROGATE = re.compile("[\ud800-\udfff]")
ROW_STEP = 16  # packed rows grow to a multiple of this up to 16 steps (256 rows),
ROW_STEPS_PER_DOUBLING = 8  # then to one of this many counts between a power of two and the next


def packed_rows(tokens: int) -> int:
    """The row count that `tokens` packed rows grow to: the next multiple of 16 up to 256, then at most
    1/8 more; 64 distinct counts up to 16,384 tokens."""
    if tokens <= 16 * ROW_STEP:
        return -(-tokens // ROW_STEP) * ROW_STEP
    step = (1 << (tokens.bit_length() - 1)) // ROW_STEPS_PER_DOUBLING
    return -(-tokens // step) * step


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

    @property
    def dtype(self) -> torch.dtype:
        """The encoder's compute dtype (the head stays in float32)."""
        return next(self.model.parameters()).dtype

    @property
    def packs_inputs(self) -> bool:
        """On the CPU the forward packs its inputs (forward_packed); on an accelerator it pads them."""
        return self.device.type == "cpu"

    def describe(self) -> dict:
        """What /v1/model shows: architecture, encoding, number of parameters."""
        return {
            "architecture": self.model.cfg.to_dict(),
            "encoding": self.tokenizer.spec.to_dict(),
            "parameters": self.model.num_parameters(),
        }

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
        if self.device.type == "cpu":
            return self._forward_packed(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        input_ids, mask = self.tokenizer.pad([ids[i] for i in order])  # (B, T) each
        # A plain copy: pinning a fresh host buffer per batch costs a page-locked allocation and overlaps
        # nothing, since the next step (the forward, then .cpu()) waits for the batch anyway.
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        try:
            with torch.inference_mode():
                sorted_out = self.model(input_ids, mask).float().cpu().tolist()  # (B,); .cpu() synchronizes
        except torch.OutOfMemoryError:
            # the batcher reruns the batch in halves: give them the memory this attempt's cache holds
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise
        raw = [0.0] * len(ids)
        for position, index in enumerate(order):
            raw[index] = sorted_out[position]
        return raw

    def _forward_packed(self, ids: Sequence[Sequence[int]]) -> list[float]:
        lengths = [len(x) for x in ids]
        packed = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
        rows = 0 if self.dtype == torch.float32 else packed_rows(len(packed))
        with torch.inference_mode():
            return self.model.forward_packed(packed, torch.tensor(lengths), rows).float().tolist()

    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Check that the encoding fits the model, then eval mode (no dropout; the fast inference paths)
        with the encoder in `dtype`; the reward head, a tiny MLP, stays in float32 so rewards keep their
        precision (see RewardHead). Cast where the weights are (the CPU), then move."""
        check_compatible(self.model, self.tokenizer)
        self.model.to(dtype=dtype).eval()
        self.model.head.float()
        self.model.to(device)
        if device.type == "cpu":
            packed_layers()  # compiled here, on the loading thread, not by the first request


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
