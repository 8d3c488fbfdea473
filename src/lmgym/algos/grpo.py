"""GRPO, group relative policy optimization (Shao et al., 2024, DeepSeekMath), outcome supervision.

k completions y_1..y_k per prompt (a group). The reward is the task reward alone (no KL in it);
the advantage of completion i, given to each of its tokens, is its reward relative to the group:

    A_i   = (r_i − mean_j r_j) / (std_j r_j + 1e-4)      scale_rewards=true (std: unbiased, over the k)
    A_i   =  r_i − mean_j r_j                            scale_rewards=false

Then `epochs` passes over the rollout in minibatches, each step minimising (masked means over the
minibatch's generated tokens, "token-level"):

    ratio_t = exp(log πθ(a_t|s_t) − log π_old(a_t|s_t))                    π_old: the rollout's policy
    L_clip  = E[ max(−A·ratio_t, −A·clip(ratio_t, 1−ε, 1+ε)) ]             ε = clip_range
    KL_t    = exp(log π0 − log πθ) − (log π0 − log πθ) − 1                 k3 estimate of KL(πθ ‖ π0) ≥ 0
    loss    = L_clip + β·E[KL_t] − ent_coef·H[πθ]                          β = grpo.beta

The KL to the reference sits in the loss, so the `kl` section (its controller and coefficient) is
not used: the trainer's KL controller is fixed at β, and the logged ``kl_coef`` is β. ``kl`` is, as
for the other algorithms, the sampled Σ_t (log π_old − log π0) per completion; ``grpo/kl`` is the
mean per-token k3 estimate under πθ during the update (the term the loss sees).
"""

from __future__ import annotations

import logging

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.critic_free import by_group, check_groups, per_token, sequence_returns
from lmgym.algos.onpolicy import OnPolicyTrainer, PolicyTerms
from lmgym.algos.ppo import ppo_policy_loss
from lmgym.rewards.kl import FixedKL
from lmgym.rollout.rollout import Rollout

log = logging.getLogger(__name__)


def grpo_advantages(rewards: torch.Tensor, k: int, scale_rewards: bool, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages; [B] → [B] (k consecutive completions per prompt)."""
    r = by_group(rewards, k)  # [B/k, k]
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_rewards:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(πθ ‖ π0) from samples of πθ: π0/πθ − log(π0/πθ) − 1 (≥ 0); [B, G].
    Padded positions are masked before the exponential: a pad's log-probs may be anything (−inf under a mask),
    and exp of them times a zero mask would be inf·0 = NaN."""
    log_ratio = torch.where(mask.bool(), ref_logprobs - logprobs, 0.0)
    return (torch.exp(log_ratio) - log_ratio - 1.0) * mask


class GRPOTrainer(OnPolicyTrainer):
    def build_extras(self) -> None:
        super().build_extras()
        if self.config.kl.model_fields_set:
            log.warning(
                "grpo ignores the `kl` section: its KL weight is grpo.beta (%s), in the loss", self.algo_config.beta
            )
        # The loss's β, so the logged kl_coef is the weight actually applied to the KL.
        self.kl_ctl = FixedKL(self.algo_config.beta)

    def kl_penalised_rewards(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The task rewards as they are (the KL is in the loss), and the sampled KL for logging."""
        kl = (rollout.logprobs - rollout.ref_logprobs) * rollout.mask
        return rollout.task_rewards, kl

    def advantages(self, rollout: Rollout, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.algo_config
        check_groups(rollout.samples, cfg.k)
        mask = rollout.mask.float()
        returns = sequence_returns(rewards, mask)  # [B]
        return per_token(grpo_advantages(returns, cfg.k, cfg.scale_rewards), mask), per_token(returns, mask)

    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's clipped objective plus β times the k3 KL estimate to the reference."""
        cfg = self.algo_config
        loss, stats = ppo_policy_loss(terms.logprobs, terms.old_logprobs, terms.advantages, terms.mask, cfg.clip_range)
        stats["grpo/kl"] = masked_mean(k3_kl(terms.logprobs, terms.ref_logprobs, terms.mask), terms.mask)
        return loss + cfg.beta * stats["grpo/kl"], stats
