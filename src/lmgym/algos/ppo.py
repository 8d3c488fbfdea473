"""PPO (Schulman et al., 2017) on the token-level MDP with a KL-penalised reward.

Per minibatch of generated tokens (masked means over tokens; the rest of the loop is OnPolicyTrainer's):

    ratio      = exp(log πθ(a|s) − log π_old(a|s))
    L_clip     = E[ max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)) ]
    L_value    = ½·E[ max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²) ]
    loss       = L_clip + vf_coef·L_value − ent_coef·H[πθ]

A, R: GAE advantages (whitened) and returns of R̂_t = R_t − β·(log πθ − log π0)_t; ``epochs`` passes over the
rollout in minibatches, stopping early when the approximate KL passes 1.5 × ``target_kl``.
"""

from __future__ import annotations

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.losses import approx_kl
from lmgym.algos.onpolicy import OnPolicyTrainer, PolicyTerms


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_clip and its statistics (the fraction of clipped tokens, the approximate KL)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": approx_kl(logprobs, old_logprobs, mask),
        }
    return loss, stats


class PPOTrainer(OnPolicyTrainer):
    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return ppo_policy_loss(
            terms.logprobs, terms.old_logprobs, terms.advantages, terms.mask, self.algo_config.clip_range
        )
