"""A2C, advantage actor-critic (Mnih et al., 2016), on the token-level MDP with a KL-penalised reward.

One pass over each rollout, in minibatches of ``minibatch_size`` samples (the default, 32,
takes a rollout of up to 32 samples in one step); per minibatch (masked means over tokens):

    L_policy   = −E[ A · log πθ(a|s) ]            no ratio, no clipping: a plain policy gradient
    L_value    = ½·E[ (V − R)² ]                  R: the GAE returns, V: the current critic
    loss       = L_policy + vf_coef·L_value − ent_coef·H[πθ]

followed by gradient-norm clipping (``max_grad_norm``) and one optimizer step. After the
first step the later minibatches are slightly off-policy; A2C ignores that (PPO's ratio
and clipping are what would correct for it).
"""

from __future__ import annotations

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.ppo import PolicyTerms, PPOTrainer, approx_kl


def a2c_policy_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−E[A·log πθ(a|s)] over the unmasked tokens; all inputs [B, G]."""
    return -masked_mean(advantages * logprobs, mask)


class A2CTrainer(PPOTrainer):
    """PPO's trainer (minibatches, scoring hooks, gradient clipping) with one epoch and the plain policy gradient."""

    def policy_loss(self, m: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return a2c_policy_loss(m.logprobs, m.advantages, m.mask), {
            "approx_kl": approx_kl(m.logprobs, m.old_logprobs, m.mask)
        }
