"""RLHF with a reward model that keeps learning: every ``rm.retrain_every`` iterations the policy's own samples
are ranked by the hidden rule (``rm.rule``, standing in for a rater) and the reward model is fine-tuned on them.

`RewardModelRefresh` is the trainer's hook: it owns its state (the fit, the comparisons gathered so far)
and writes it to the run folder (``reward_model/``, ``rm-comparisons.jsonl``), from which a resumed run
continues.
"""

from __future__ import annotations

import random

from lmgym.algos.rm import RewardModelFit, pairwise_accuracy
from lmgym.algos.rm_train import rule_reward
from lmgym.config import ConfigError
from lmgym.data.preferences import comparisons_from_scored, load_comparisons, write_jsonl
from lmgym.models.reward_model import META_FILE, load_reward_model
from lmgym.rewards.base import Reward
from lmgym.rewards.reward_model import RewardModelReward
from lmgym.rollout.logged import log_generations

RETRAINED_DIR = "reward_model"
RETRAIN_DATA = "rm-comparisons.jsonl"


def check_retrainable(reward: Reward) -> None:
    """rm.retrain_every needs the run's reward to be a reward model it can fine-tune."""
    if not isinstance(reward, RewardModelReward):
        raise ConfigError(
            f"rm.retrain_every > 0 fine-tunes the reward model being optimised, but the reward is "
            f"{getattr(reward, 'name', type(reward).__name__)!r}: set reward.name to a reward model folder "
            "(from `lmgym rm train`) with no scale/clip/normalize wrapper, or rm.retrain_every=0"
        )


class RewardModelRefresh:
    """Every ``rm.retrain_every`` iterations: sample k completions of ``rm.retrain_prompts`` train prompts
    from the current policy, rank them with the hidden rule (``rm.rule``, standing in for a rater), measure
    the reward model's accuracy on these fresh comparisons (it falls when the policy finds its blind spots),
    and take ``rm.retrain_steps`` gradient steps on all comparisons gathered so far. The trainer calls
    `after_iteration`; the fine-tuned model and the comparisons are written to the run folder, and a
    resumed run continues from the newest of them (which may be newer than its checkpoint)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.fit: RewardModelFit | None = None
        self.comparisons: list = []

    def _start(self) -> None:
        """Load the newest retrained model of a resumed run, and the comparisons gathered so far."""
        reward, root = self.trainer.reward, self.trainer.run.root
        if (root / RETRAINED_DIR / META_FILE).exists():
            reward.model, _ = load_reward_model(root / RETRAINED_DIR)
        self.fit = RewardModelFit(reward.model, self.trainer.config.rm)
        self.comparisons = load_comparisons(root / RETRAIN_DATA) if (root / RETRAIN_DATA).exists() else []

    def after_iteration(self, iteration: int) -> dict[str, float]:
        trainer, cfg = self.trainer, self.trainer.config.rm
        if iteration % cfg.retrain_every:
            return {}
        if self.fit is None:
            self._start()
        rng = random.Random(trainer.config.seed * 7919 + iteration)
        prompts = rng.sample(trainer.train_samples, min(cfg.retrain_prompts, len(trainer.train_samples)))
        scored = log_generations(
            trainer.policy,
            rule_reward(trainer.config, trainer.task),
            prompts,
            trainer.generation,
            trainer.config.model.max_prompt_tokens,
            per_prompt=cfg.k,
            seed=trainer.config.seed * 7919 + iteration,
        )
        fresh = comparisons_from_scored(scored, "ranking")
        stats = {"rm/new_comparisons": float(len(fresh))}
        if not fresh:
            return stats
        model = trainer.reward.model
        stats["rm/accuracy_on_policy"] = pairwise_accuracy(model, fresh)
        self.comparisons += fresh
        losses = self.fit.fit(self.comparisons, cfg.retrain_steps, trainer.config.seed + iteration)
        stats["rm/retrain_loss"] = sum(losses) / len(losses)
        if trainer.dist.is_main:
            write_jsonl(trainer.run.root / RETRAIN_DATA, self.comparisons)
            model.save(trainer.run.root / RETRAINED_DIR, {"retrained_at_iteration": iteration})
        return stats
