"""PPO's clipped policy loss and clipped value loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from lmgym.algos.losses import value_loss
from lmgym.algos.ppo import ppo_policy_loss

# ratios  [[1.5, 0.5, 1.0], [1.1, 0.7, 1.3]]  (the last one is masked)
RATIOS = [[1.5, 0.5, 1.0], [1.1, 0.7, 1.3]]
ADVANTAGES = torch.tensor([[1.0, 1.0, -2.0], [-1.0, -1.0, 3.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _logprobs() -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.5, -0.7]])
    new = (old + torch.log(torch.tensor(RATIOS))).requires_grad_(True)
    return new, old


def test_policy_loss_clips_on_both_sides() -> None:
    new, old = _logprobs()
    loss, stats = ppo_policy_loss(new, old, ADVANTAGES, MASK, clip_range=0.2)
    # per token max(−A·r, −A·clip(r, 0.8, 1.2)):
    #   (0,0) r=1.5, A=+1 → max(−1.5, −1.2) = −1.2   clipped (upper side)
    #   (0,1) r=0.5, A=+1 → max(−0.5, −0.8) = −0.5   not clipped (pessimistic side)
    #   (0,2) r=1.0, A=−2 → 2.0
    #   (1,0) r=1.1, A=−1 → 1.1                      inside the range
    #   (1,1) r=0.7, A=−1 → max(0.7, 0.8) = 0.8      clipped (lower side)
    #   (1,2) masked
    assert float(loss.detach()) == pytest.approx((-1.2 - 0.5 + 2.0 + 1.1 + 0.8) / 5, abs=1e-6)
    assert float(stats["clip_frac"]) == pytest.approx(2 / 5, abs=1e-6)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.0, 1.1, 0.7)) / 5
    assert float(stats["approx_kl"]) == pytest.approx(expected_kl, abs=1e-6)
    assert float(stats["approx_kl"]) == pytest.approx(0.06980934, abs=1e-6)

    loss.backward()
    # d(−A·r)/d log π = −A·r where the unclipped term is active; 0 where clipped or masked; / 5 tokens.
    expected_grad = torch.tensor([[0.0, -0.5 / 5, 2.0 / 5], [1.1 / 5, 0.0, 0.0]])
    torch.testing.assert_close(new.grad, expected_grad, atol=1e-6, rtol=0)


def test_policy_loss_on_policy_is_minus_mean_advantage() -> None:
    old = torch.randn(2, 3)
    loss, stats = ppo_policy_loss(old.clone(), old, ADVANTAGES, MASK, clip_range=0.2)
    assert float(loss) == pytest.approx(-(1 + 1 - 2 - 1 - 1) / 5, abs=1e-6)
    assert float(stats["clip_frac"]) == 0.0
    assert float(stats["approx_kl"]) == pytest.approx(0.0, abs=1e-7)


def test_policy_loss_wider_clip_range_clips_nothing() -> None:
    new, old = _logprobs()
    loss, stats = ppo_policy_loss(new, old, ADVANTAGES, MASK, clip_range=0.6)
    # r ∈ [0.4, 1.6]: every token is unclipped: Σ −A·r = −1.5 − 0.5 + 2 + 1.1 + 0.7
    assert float(loss.detach()) == pytest.approx((-1.5 - 0.5 + 2.0 + 1.1 + 0.7) / 5, abs=1e-6)
    assert float(stats["clip_frac"]) == 0.0


def test_value_loss_clipped_and_unclipped() -> None:
    values = torch.tensor([[1.0, 0.0, 1.0], [2.0, -1.0, 3.0]])
    old_values = torch.tensor([[0.5, 0.5, 0.5], [2.1, -1.0, 0.0]])
    returns = torch.tensor([[1.2, 0.0, 0.0], [1.0, 0.5, 7.0]])
    # clip 0.2, per token max((V − R)², (V_old + clip(V − V_old, ±0.2) − R)²):
    #   (0,0) V moves +0.5 → clipped V = 0.7: max(0.04, 0.25) = 0.25
    #   (0,1) V moves −0.5 → clipped V = 0.3: max(0, 0.09) = 0.09
    #   (0,2) V moves +0.5 → clipped V = 0.7: max(1.0, 0.49) = 1.0
    #   (1,0) V moves −0.1 (inside): 1.0;  (1,1) V unchanged: 2.25;  (1,2) masked
    loss = value_loss(values, old_values, returns, MASK, clip=0.2)
    assert float(loss) == pytest.approx(0.5 * (0.25 + 0.09 + 1.0 + 1.0 + 2.25) / 5, abs=1e-6)
    unclipped = value_loss(values, old_values, returns, MASK, clip=None)
    assert float(unclipped) == pytest.approx(0.5 * (0.04 + 0.0 + 1.0 + 1.0 + 2.25) / 5, abs=1e-6)

    v = values.clone().requires_grad_(True)
    value_loss(v, old_values, returns, MASK, clip=0.2).backward()
    # Gradient flows only where the unclipped square is the max: d ½(V−R)²/5 = (V − R)/5.
    expected = torch.tensor([[0.0, 0.0, 1.0 / 5], [1.0 / 5, -1.5 / 5, 0.0]])
    torch.testing.assert_close(v.grad, expected, atol=1e-6, rtol=0)
