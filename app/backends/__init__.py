"""Model backends: one module per model family behind one interface.

The serving path never looks inside a model. A version's backend turns text into token ids at admission
(per request, off the event loop, so the batcher knows every item's exact length and a text that cannot
be encoded is refused alone) and token ids into raw rewards on a compute worker (one forward pass per
micro-batch). Batching, the hybrid reward, normalization, metrics, reload and the API are the same for
every backend.

- `app.backends.native`: the encoder this project trains (`app.model.RewardModel` + `tokenizer.json`).
- `app.backends.hf`: Hugging Face `*ForSequenceClassification` checkpoints with one output (optional
  dependency `transformers`, the `[hf]` extra).
- `app.backends.choice`: how the native model's forward runs on this machine (torch float32 or bfloat16,
  ONNX Runtime float32 or int8), measured at load within an accuracy guard against float32.
- `app.backends.onnx`: the ONNX Runtime path (export, derived cache, session; the `[onnx]` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


class EncodeError(ValueError):
    """A text the backend cannot turn into token ids (e.g. an unpaired UTF-16 surrogate).

    `index` is the position of the pair at fault in the call's input and `field` names its side
    ("prompt" or "response"), so that the caller can refuse that item alone with a 4xx.
    """

    def __init__(self, index: int, field: str, reason: str):
        super().__init__(f"item {index} {field}: {reason}")
        self.index = index
        self.field = field
        self.reason = reason


@runtime_checkable
class RewardBackend(Protocol):
    """What the service needs of a loaded model."""

    kind: str  # "native", "hf", ...: shown in /v1/model
    max_len: int  # tokens of one model input, special tokens included (the truncation length)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each (prompt, response) pair exactly as the model reads them: rendered,
        truncated to `max_len`, special tokens included. CPU only, thread-safe, no torch state.
        Raises EncodeError naming the first pair that cannot be encoded."""
        ...

    def forward(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Raw rewards of already encoded inputs, in input order: pad, one forward pass, unpad.
        The result of an input does not depend on the others in the call (beyond float rounding)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the forward pass computes in (after `prepare`)."""
        ...

    @property
    def packs_inputs(self) -> bool:
        """Whether `forward` packs its inputs without padding, so that a batch costs its real tokens
        (False: padded to the longest, a batch costs size x longest). The batcher cuts batches by it."""
        ...

    def describe(self) -> dict:
        """{"architecture": dict, "encoding": dict, "parameters": int} for /v1/model."""
        ...

    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Make a model freshly loaded on the CPU ready to serve in `dtype` on `device` (eval mode, cast
        on the CPU, then moved, so no float32 copy is staged on an accelerator); raises CheckpointError
        when the checkpoint cannot serve (e.g. its encoding does not fit the model). Compute thread."""
        ...
