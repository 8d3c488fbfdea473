"""REINFORCE with a moving-average baseline (Williams, 1992) on the token-level MDP.

Rewards are KL-penalised per token, R̂_t = R_t − β·(log πθ − log π0)_t (the `kl` section's β).
With γ = 1 the return of token t is its return-to-go, and the baseline b is a moving average
of the mean sequence return G_0 over the earlier iterations:

    G_t   = Σ_{t' ≥ t} R̂_t'                                        [B, G]
    A_t   = G_t − b                                                 b of the iterations before this one
                                                                      (at the first: this batch's mean)
    b     ← decay·b + (1 − decay)·mean_batch(G_0)                   after the advantages; decay =
                                                                      baseline_decay (0: the last batch's)

The baseline leaves the batch it scores out: a baseline that holds the sample's own return is
correlated with it and biases the gradient (the first iteration, which has no history, excepted).
    loss  = −E[ A_t · log πθ(a_t|s_t) ] − ent_coef·H[πθ]            one pass, minibatches, masked
                                                                      means over generated tokens

b is a float kept in the trainer and saved with each checkpoint (``reinforce_baseline`` in
``trainer_state.json``), so a resumed run continues with the same baseline.
"""

from __future__ import annotations

from typing import Any

import torch

from lmgym.algos.losses import approx_kl, policy_gradient_loss
from lmgym.algos.onpolicy import OnPolicyTrainer, PolicyTerms
from lmgym.errors import NotFoundError
from lmgym.rollout.rollout import Rollout


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{t' ≥ t} R̂_t' (γ = 1) over the unmasked tokens; [B, G] → [B, G]."""
    rewards = rewards * mask
    return rewards.flip(-1).cumsum(-1).flip(-1) * mask


def update_baseline(baseline: float | None, batch_mean: float, decay: float) -> float:
    """Exponential moving average; the first batch sets it (no bias toward 0)."""
    if baseline is None:
        return batch_mean
    return decay * baseline + (1.0 - decay) * batch_mean


class ReinforceTrainer(OnPolicyTrainer):
    def build_extras(self) -> None:
        super().build_extras()
        self.baseline: float | None = None

    def trainer_state(self, iteration: int) -> dict[str, Any]:
        return {**super().trainer_state(iteration), "reinforce_baseline": self.baseline}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        if "reinforce_baseline" not in state:
            raise NotFoundError("the checkpoint has no 'reinforce_baseline': it was not written by a REINFORCE run")
        self.baseline = state["reinforce_baseline"]

    def advantages(self, rollout: Rollout, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = rollout.mask.float()
        returns = returns_to_go(rewards, mask)  # [B, G]
        batch_mean = float(returns[:, 0].mean())
        # Several processes: the global batch's mean (the ranks' batches are the same size), so all agree on b.
        batch_mean = self.dist.mean_float(batch_mean)
        baseline = batch_mean if self.baseline is None else self.baseline  # the earlier iterations' only
        self.baseline = update_baseline(self.baseline, batch_mean, self.algo_config.baseline_decay)
        return (returns - baseline) * mask, returns

    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = policy_gradient_loss(terms.logprobs, terms.advantages, terms.mask)
        return loss, {"approx_kl": approx_kl(terms.logprobs, terms.old_logprobs, terms.mask)}

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        stats = super().update(rollout, advantages, returns)
        stats["reinforce/baseline"] = float(self.baseline)
        return stats
