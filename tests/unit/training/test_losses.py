from __future__ import annotations

import math

import pytest
import torch

from app.training.losses import bradley_terry_loss, centering_penalty, length_correlation_penalty


def test_bradley_terry_is_log2_at_a_tie_and_weights_pick_pairs() -> None:
    zero = torch.zeros(3)
    assert bradley_terry_loss(zero, zero, torch.ones(3)).item() == pytest.approx(math.log(2))
    chosen, rejected = torch.tensor([5.0, -5.0]), torch.zeros(2)
    only_right = bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 0.0])).item()
    only_wrong = bradley_terry_loss(chosen, rejected, torch.tensor([0.0, 1.0])).item()
    assert only_right < 0.01 < 4.9 < only_wrong


def test_length_penalty_is_high_for_a_length_detector_and_low_otherwise() -> None:
    lengths = torch.tensor([10.0, 50.0, 200.0, 800.0, 20.0, 400.0])
    assert length_correlation_penalty(torch.log1p(lengths), lengths).item() == pytest.approx(1.0)
    x = torch.log1p(lengths) - torch.log1p(lengths).mean()
    noise = torch.tensor([0.3, -0.2, 0.1, 0.3, -0.2, 0.1])
    unrelated = noise - (noise @ x) / (x @ x) * x  # the part of the noise orthogonal to log length
    assert length_correlation_penalty(unrelated, lengths).item() < 1e-6
    rewards = torch.log1p(lengths).requires_grad_()
    length_correlation_penalty(rewards + 0.1 * torch.randn(6), lengths).backward()
    assert rewards.grad.abs().sum() > 0  # it is differentiable: training can lower it


def test_centering_penalty_is_the_squared_mean() -> None:
    assert centering_penalty(torch.tensor([1.0, 3.0])).item() == pytest.approx(4.0)
    assert centering_penalty(torch.tensor([-1.0, 1.0])).item() == 0.0
