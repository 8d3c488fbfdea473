"""Tensor helpers of the critic-free algorithms (REINFORCE, RLOO, GRPO), whose baseline comes from other
samples instead of a value head (a moving average, the other k−1 completions of a prompt, the group's mean).

RLOO and GRPO draw k completions per prompt; the trainer puts the k copies of a prompt next to each other
in the rollout, so a [B] tensor viewed as [B/k, k] holds one prompt per row.
"""

from __future__ import annotations

import torch

from lmgym.data.sample import Sample
from lmgym.errors import InputError


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t R̂_t over each completion's generated tokens: [B, G] → [B]."""
    return (rewards * mask).sum(-1)


def by_group(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B] → [B/k, k]: row i holds the k completions of the i-th prompt."""
    if x.shape[0] % k:
        raise InputError(f"{x.shape[0]} samples do not split into groups of k={k}")
    return x.view(-1, k)


def check_groups(samples: list[Sample], k: int) -> None:
    """Raise unless the samples come as k consecutive copies of each prompt."""
    if len(samples) % k:
        raise InputError(f"the rollout holds {len(samples)} samples, not a multiple of k={k}")
    for start in range(0, len(samples), k):
        ids = {s.id for s in samples[start : start + k]}
        if len(ids) != 1:
            raise InputError(f"samples {start}..{start + k - 1} should be k={k} completions of one prompt, got {ids}")


def per_token(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give each generated token its completion's value: [B] → [B, G] (0 under the mask)."""
    return x[:, None] * mask
