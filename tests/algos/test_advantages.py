"""GAE, whitening and masked means against hand computations and a naive reference."""

from __future__ import annotations

import pytest
import torch

from lmgym.algos.advantages import gae, masked_mean, masked_var, whiten


def test_gae_hand_computed_with_masked_tail() -> None:
    gamma, lam = 0.9, 0.8  # γλ = 0.72
    # Row 0 ends after 3 tokens: the reward and value under the mask must be ignored.
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0], [0.2, 0.4, 0.6, 0.8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])

    advantages, returns = gae(rewards, values, mask, gamma, lam)

    # Row 0: δ2 = 2 − 1.5 = 0.5 (V after the last token is 0), δ1 = 0.9·1.5 − 1 = 0.35, δ0 = 1 + 0.9·1 − 0.5 = 1.4
    #        A2 = 0.5, A1 = 0.35 + 0.72·0.5 = 0.71, A0 = 1.4 + 0.72·0.71 = 1.9112
    # Row 1: δ = [0.16, 0.14, 0.12, 0.2]; A3 = 0.2, A2 = 0.264, A1 = 0.33008, A0 = 0.3976576
    expected_adv = torch.tensor([[1.9112, 0.71, 0.5, 0.0], [0.3976576, 0.33008, 0.264, 0.2]])
    expected_ret = torch.tensor([[2.4112, 1.71, 2.0, 0.0], [0.5976576, 0.73008, 0.864, 1.0]])
    torch.testing.assert_close(advantages, expected_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(returns, expected_ret, atol=1e-6, rtol=0)


def _naive_gae(rewards: list[float], values: list[float], length: int, gamma: float, lam: float) -> list[float]:
    """Per sample, straight from the definition A_t = Σ_l (γλ)^l δ_{t+l} with V(s_T) = 0."""
    deltas = []
    for t in range(length):
        next_value = values[t + 1] if t + 1 < length else 0.0
        deltas.append(rewards[t] + gamma * next_value - values[t])
    advantages = []
    for t in range(length):
        advantages.append(sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t)))
    return advantages + [0.0] * (len(rewards) - length)


@pytest.mark.parametrize(("gamma", "lam"), [(0.95, 0.9), (1.0, 0.95), (0.5, 0.0), (0.99, 1.0)])
def test_gae_matches_naive_per_sample_loop(gamma: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(7)
    lengths = [7, 1, 4, 0, 7, 3]
    B, G = len(lengths), 7
    rewards = torch.randn(B, G, generator=gen, dtype=torch.float64)
    values = torch.randn(B, G, generator=gen, dtype=torch.float64)
    mask = (torch.arange(G)[None, :] < torch.tensor(lengths)[:, None]).long()

    advantages, returns = gae(rewards, values, mask, gamma, lam)

    for i, length in enumerate(lengths):
        expected = _naive_gae(rewards[i].tolist(), values[i].tolist(), length, gamma, lam)
        torch.testing.assert_close(advantages[i], torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0)
        expected_returns = [
            a + v if t < length else 0.0 for t, (a, v) in enumerate(zip(expected, values[i].tolist(), strict=True))
        ]
        torch.testing.assert_close(returns[i], torch.tensor(expected_returns, dtype=torch.float64), atol=1e-10, rtol=0)


def test_whiten_masked_moments_and_zeros_under_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=gen, dtype=torch.float64) * 3.0 + 10.0
    x[:, -3:] += 1000.0  # huge values under the mask must not leak into the statistics
    mask = torch.ones(5, 9, dtype=torch.long)
    mask[:, -3:] = 0
    mask[2, 2:] = 0

    out = whiten(x, mask)

    valid = out[mask.bool()]
    assert abs(float(valid.mean())) < 1e-6
    assert abs(float(valid.var(unbiased=False)) - 1.0) < 1e-6
    assert torch.all(out[~mask.bool()] == 0)
    # Whitening is an affine map of the valid entries: the ordering is kept.
    xv = x[mask.bool()]
    expected = (xv - xv.mean()) / xv.std(unbiased=False)
    torch.testing.assert_close(valid, expected, atol=1e-6, rtol=0)

    kept = whiten(x, mask, shift_mean=False)
    assert abs(float(kept[mask.bool()].mean()) - float(xv.mean())) < 1e-6
    assert abs(float(kept[mask.bool()].std(unbiased=False)) - 1.0) < 1e-6
    assert torch.all(kept[~mask.bool()] == 0)


def test_masked_mean_and_var() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert float(masked_mean(x, mask)) == pytest.approx((1 + 2 + 30) / 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 30.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([1.0, 2.0, 30.0]))
    # An empty mask gives 0, not NaN.
    assert float(masked_mean(x, torch.zeros_like(mask))) == 0.0
    torch.testing.assert_close(masked_mean(x, torch.tensor([[1, 1, 1], [0, 0, 0]]), dim=1), torch.tensor([2.0, 0.0]))
    mean = 11.0
    expected_var = ((1 - mean) ** 2 + (2 - mean) ** 2 + (30 - mean) ** 2) / 3
    assert float(masked_var(x, mask)) == pytest.approx(expected_var)
