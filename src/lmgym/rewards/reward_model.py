"""A trained reward model (`lmgym rm train`) as a reward.

In a config: ``reward: {name: runs/my-rm}`` (a reward model folder) or ``reward: {name: reward_model, args:
{path: runs/my-rm}}``; it is also the metric ``reward_model`` (lmgym.rewards.learned)."""

from __future__ import annotations

from pathlib import Path

from lmgym.models.reward_model import load_reward_model
from lmgym.rewards.base import Reward


class RewardModelReward(Reward):
    """The normalised score r(prompt, generation) of the reward model in folder ``path``.

    ``model`` lets the RLHF loop hand over a model it keeps fine-tuning (periodic retraining) instead
    of loading another copy."""

    def __init__(self, path: str | Path, batch_size: int = 32, model=None) -> None:
        self.path = Path(path)
        if model is None:
            model, self.meta = load_reward_model(self.path)
        else:
            self.meta = {}
        self.model = model
        self.batch_size = batch_size
        self.name = f"reward_model[{self.path.name}]"

    def score(self, prompts, generations, references, meta) -> list[float]:
        return self.model.score(list(prompts), list(generations), self.batch_size)
