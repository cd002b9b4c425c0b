"""Training objectives: the Bradley-Terry pair loss and the optional terms that keep the reward honest."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of -log sigmoid(r_chosen - r_rejected): (B,), (B,), (B,) -> ()."""
    per_pair = -F.logsigmoid(chosen - rejected)
    return (per_pair * weights).sum() / weights.sum()


def length_correlation_penalty(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Squared Pearson correlation of rewards with log response length over a batch: (N,), (N,) -> ().
    Pushes the model to explain preferences by something other than length."""
    x = torch.log1p(lengths.to(rewards.dtype))
    x, r = x - x.mean(), rewards - rewards.mean()
    denominator = (x.square().sum() * r.square().sum()).sqrt().clamp(min=1e-6)
    return ((x * r).sum() / denominator).square()


def centering_penalty(rewards: torch.Tensor) -> torch.Tensor:
    """Squared batch-mean reward: pins the reward's free offset near zero (Bradley-Terry only sees gaps)."""
    return rewards.mean().square()
