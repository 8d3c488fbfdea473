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

from collections import defaultdict

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.ppo import PPOTrainer, value_loss
from lmgym.algos.rollout import Rollout


def a2c_policy_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−E[A·log πθ(a|s)] over the unmasked tokens; all inputs [B, G]."""
    return -masked_mean(advantages * logprobs, mask)


class A2CTrainer(PPOTrainer):
    """PPO's trainer (minibatches, scoring hooks, gradient clipping) with one epoch and the plain policy gradient."""

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        cfg = self.algo_config
        old_logprobs = self.old_logprobs(rollout)
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        for idx in self.minibatches(len(rollout.samples)):
            mask = rollout.mask[idx].float()
            logprobs, entropy, values = self.score_minibatch(rollout, idx, with_entropy=cfg.ent_coef != 0)
            pg_loss = a2c_policy_loss(logprobs, advantages[idx], mask)
            loss = pg_loss
            v_loss = torch.zeros(())
            if values is not None:
                v_loss = value_loss(values, rollout.values[idx], returns[idx], mask, clip=None)
                loss = loss + cfg.vf_coef * v_loss
            if entropy is not None:
                loss = loss - cfg.ent_coef * masked_mean(entropy, mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = self.clip_gradients(cfg.max_grad_norm)
            self.optimizer.step()
            steps += 1
            with torch.no_grad():  # diagnostic only: k3 estimate of KL(π_old ‖ πθ) before this step
                log_ratio = logprobs - old_logprobs[idx]
                approx_kl = masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask)
            for key, value in (
                ("loss/policy", pg_loss), ("loss/value", v_loss), ("loss/total", loss), ("grad_norm", grad_norm),
                ("approx_kl", approx_kl),
            ):
                sums[key] += float(value.detach())
        stats = {k: v / steps for k, v in sums.items()}
        stats["update_steps"] = float(steps)
        return stats
