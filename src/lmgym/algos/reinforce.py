"""REINFORCE with a moving-average baseline (Williams, 1992) on the token-level MDP.

Rewards are KL-penalised per token, R̂_t = R_t − β·(log πθ − log π0)_t (the `kl` section's β).
With γ = 1 the return of token t is its return-to-go, and the baseline b is a moving average
of the mean sequence return G_0 over iterations:

    G_t   = Σ_{t' ≥ t} R̂_t'                                        [B, G]
    b     ← decay·b + (1 − decay)·mean_batch(G_0)                   (b = mean_batch(G_0) at the first
                                                                      iteration; decay = baseline_decay)
    A_t   = G_t − b                                                 (the updated b, so decay = 0 is the
                                                                      batch mean)
    loss  = −E[ A_t · log πθ(a_t|s_t) ] − ent_coef·H[πθ]            one pass, minibatches, masked
                                                                      means over generated tokens

b is a float kept in the trainer and saved with each checkpoint (``reinforce_baseline`` in
``trainer_state.json``), so a resumed run continues with the same baseline.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from lmgym.algos.critic_free import CriticFreeTrainer
from lmgym.algos.rollout import Rollout
from lmgym.checkpoint import list_checkpoints, prune_checkpoints, save_checkpoint


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{t' ≥ t} R̂_t' (γ = 1) over the unmasked tokens; [B, G] → [B, G]."""
    rewards = rewards * mask
    return rewards.flip(-1).cumsum(-1).flip(-1) * mask


def update_baseline(baseline: float | None, batch_mean: float, decay: float) -> float:
    """Exponential moving average; the first batch sets it (no bias toward 0)."""
    if baseline is None:
        return batch_mean
    return decay * baseline + (1.0 - decay) * batch_mean


class ReinforceTrainer(CriticFreeTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.baseline: float | None = None
        super().__init__(*args, **kwargs)
        if self.start_iteration > 1:  # resumed: the base loaded the newest checkpoint
            _, path = list_checkpoints(self.run.checkpoints)[-1]
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            if "reinforce_baseline" not in state:
                raise KeyError(f"{path} has no 'reinforce_baseline': it was not written by a REINFORCE run")
            self.baseline = state["reinforce_baseline"]

    def advantages(self, rollout: Rollout, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = rollout.mask.float()
        returns = returns_to_go(rewards, mask)  # [B, G]
        self.baseline = update_baseline(self.baseline, float(returns[:, 0].mean()), self.algo_config.baseline_decay)
        return (returns - self.baseline) * mask, returns

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        stats = super().update(rollout, advantages, returns)
        stats["reinforce/baseline"] = float(self.baseline)
        return stats

    def save(self, iteration: int) -> None:
        # OnPolicyTrainer.save's state plus the baseline (the base has no hook for extra keys).
        state = {
            "iteration": iteration,
            "kl_ctl": self.kl_ctl.state_dict(),
            "before": self.before,
            "before_samples": self.before_samples[:3],
            "config": self.config.model_dump(mode="json"),
            "reinforce_baseline": self.baseline,
        }
        save_checkpoint(self.run.checkpoints / f"step-{iteration}", self.policy, self.optimizer, state)
        prune_checkpoints(self.run.checkpoints, self.config.checkpoint.keep)
