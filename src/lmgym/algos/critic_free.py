"""Shared pieces of the critic-free algorithms (REINFORCE, RLOO, GRPO).

None of them builds a value head (``uses_critic = False``): the baseline comes from other
samples instead (a moving average, the other k−1 completions of a prompt, the group's mean).
RLOO and GRPO draw k completions per prompt; the base trainer puts the k copies of a prompt
next to each other in the rollout, so a [B] tensor viewed as [B/k, k] holds one prompt per row.

REINFORCE and RLOO share the plain policy-gradient update, one pass in minibatches
(masked means over the minibatch's generated tokens):

    L_pg  = −E[ A · log πθ(a_t|s_t) ]            no ratio, no clipping
    loss  = L_pg − ent_coef·H[πθ]
"""

from __future__ import annotations

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.ppo import PolicyTerms, PPOTrainer, approx_kl
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


def policy_gradient_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−E[A·log πθ(a|s)] over the unmasked tokens; all inputs [B, G]."""
    return -masked_mean(advantages * logprobs, mask)


class CriticFreeTrainer(PPOTrainer):
    """No value head; one pass of the plain policy gradient through PPO's minibatch loop."""

    uses_critic = False

    def policy_loss(self, m: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = policy_gradient_loss(m.logprobs, m.advantages, m.mask)
        return loss, {"approx_kl": approx_kl(m.logprobs, m.old_logprobs, m.mask)}
