"""Batched, length-sorted inference with a reward model, for validation during training and for evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from app.backends import RewardBackend
from app.model import RewardModel
from app.tokenizer import PairTokenizer
from app.training.batching import ordered_batches


@torch.no_grad()
def rewards_for_ids(
    model: RewardModel, tokenizer: PairTokenizer, ids: Sequence[Sequence[int]], batch_size: int = 64
) -> torch.Tensor:
    """Raw rewards of already-encoded inputs, in input order: -> (N,) float32 on CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty(len(ids), dtype=torch.float32)
    with warnings.catch_warnings():  # eval mode takes torch's nested-tensor fast path: a prototype warning
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")
        for batch in ordered_batches([len(x) for x in ids], batch_size):
            input_ids, mask = tokenizer.pad([ids[i] for i in batch])
            out[batch] = model(input_ids.to(device), mask.to(device)).float().cpu()
    model.train(was_training)
    return out


def score_responses(
    model: RewardModel,
    tokenizer: PairTokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 64,
) -> torch.Tensor:
    """Raw rewards of (prompt, response) pairs, in input order: -> (N,)."""
    return rewards_for_ids(model, tokenizer, tokenizer.encode_pairs(prompts, responses), batch_size)


def backend_rewards(
    backend: RewardBackend, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """Raw rewards of (prompt, response) pairs through a served model's backend, in input order:
    -> (N,) float32. Any backend (native or Hugging Face), length-sorted batches."""
    ids = backend.encode(prompts, responses)
    out = torch.empty(len(ids), dtype=torch.float32)
    for batch in ordered_batches([len(x) for x in ids], batch_size):
        out[batch] = torch.tensor(backend.forward([ids[i] for i in batch]), dtype=torch.float32)
    return out
