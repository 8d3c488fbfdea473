"""RLOO, REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024).

k completions y_1..y_k per prompt x (rollout.batch_size / k prompts per iteration). Each
completion is one action with a sequence-level, KL-penalised return (β from the `kl` section):

    r_i   = R(x, y_i) − β·Σ_t (log πθ − log π0)(y_i,t)              the task reward minus β·KL of y_i
    b_i   = 1/(k−1) · Σ_{j≠i} r_j                                   the mean of the other k−1 returns
    A_i   = r_i − b_i                    (= k/(k−1)·(r_i − mean_j r_j)), given to every token of y_i
    loss  = −E[ A_i · log πθ(y_i,t | x, y_i,<t) ] − ent_coef·H[πθ]  one pass, minibatches, masked
                                                                      means over generated tokens
"""

from __future__ import annotations

import torch

from lmgym.algos.critic_free import by_group, check_groups, per_token, sequence_returns
from lmgym.algos.losses import approx_kl, policy_gradient_loss
from lmgym.algos.onpolicy import OnPolicyTrainer, PolicyTerms
from lmgym.rollout.rollout import Rollout


def rloo_advantages(returns: torch.Tensor, k: int) -> torch.Tensor:
    """r_i − mean of the other k−1 returns of the same prompt; [B] → [B] (k consecutive per prompt)."""
    r = by_group(returns, k)  # [B/k, k]
    baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    return (r - baseline).reshape(-1)


class RLOOTrainer(OnPolicyTrainer):
    def advantages(self, rollout: Rollout, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.algo_config.k
        check_groups(rollout.samples, k)
        mask = rollout.mask.float()
        returns = sequence_returns(rewards, mask)  # [B]
        return per_token(rloo_advantages(returns, k), mask), per_token(returns, mask)

    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = policy_gradient_loss(terms.logprobs, terms.advantages, terms.mask)
        return loss, {"approx_kl": approx_kl(terms.logprobs, terms.old_logprobs, terms.mask)}
