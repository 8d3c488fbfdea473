"""Generalised advantage estimation and whitening over masked token sequences."""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def global_masked_moments(
    x: torch.Tensor, mask: torch.Tensor, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the unmasked entries of ``x`` over all ranks' batches (data parallel):
    sums of x, x² and the count are added up across ranks, so every rank gets the global statistics."""
    mask = mask.to(x.dtype)
    xm = x * mask
    sums = sum_over_ranks(torch.stack([xm.sum(), (xm * x).sum(), mask.sum()]).double())
    count = sums[2].clamp(min=1.0)
    mean = sums[0] / count
    var = (sums[1] / count - mean**2).clamp(min=0.0)
    return mean.to(x.dtype), var.to(x.dtype)


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Scale the unmasked entries to mean 0 and variance 1 (``shift_mean=False`` keeps the mean).
    With ``sum_over_ranks`` (several processes) the statistics are those of the global batch."""
    if sum_over_ranks is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = global_masked_moments(x, mask, sum_over_ranks)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, all [B, G].

    Episodes end at the last unmasked token (EOS or horizon), where V(s_{T}) = 0.
    The loop runs over G time steps on whole-batch tensors.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    G = values.shape[1]
    for t in reversed(range(G)):
        next_value = values[:, t + 1] if t + 1 < G else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask
