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

from lmgym.algos.losses import approx_kl, policy_gradient_loss
from lmgym.algos.onpolicy import OnPolicyTrainer, PolicyTerms


class A2CTrainer(OnPolicyTrainer):
    """The plain policy gradient with a critic: one epoch (``a2c.epochs``), no ratio, no clipping."""

    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = policy_gradient_loss(terms.logprobs, terms.advantages, terms.mask)
        return loss, {"approx_kl": approx_kl(terms.logprobs, terms.old_logprobs, terms.mask)}
