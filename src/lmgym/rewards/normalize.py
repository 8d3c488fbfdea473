"""Reward normalisation by running statistics.

`RunningNormalize` divides by (and optionally centres on) the running standard deviation (mean) of
every score seen so far, a common way to keep the scale of the advantage stable when a reward's
range is unknown or drifts (Ziegler et al. normalise their reward model's output the same way).
Statistics update with each batch before it is normalised (Chan et al.'s parallel form of Welford's
algorithm), so the first batch is already on a unit scale. Per-token rewards pool all tokens.
"""

from __future__ import annotations

import math

from lmgym.rewards.base import Reward, Scores, as_reward


class RunningMeanStd:
    """Running count, mean and variance of a stream of numbers."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        if not values:
            return
        n = len(values)
        batch_mean = sum(values) / n
        batch_m2 = sum((v - batch_mean) ** 2 for v in values)
        total = self.count + n
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class RunningNormalize(Reward):
    """``(score − mean) / (std + eps)`` with running statistics (``center=False`` keeps the mean:
    ``score / (std + eps)``)."""

    def __init__(self, inner: Reward, center: bool = True, eps: float = 1e-8) -> None:
        self.inner, self.center, self.eps = as_reward(inner), center, eps
        self.per_token = self.inner.per_token
        self.name = getattr(self.inner, "name", "reward")
        self.stats = RunningMeanStd()

    def _norm(self, x: float) -> float:
        return ((x - self.stats.mean) if self.center else x) / (self.stats.std + self.eps)

    def score(self, prompts, generations, references, meta) -> Scores:
        scores = self.inner(prompts, generations, references, meta)
        if self.per_token:
            self.stats.update([float(x) for row in scores for x in row])
            return [[self._norm(float(x)) for x in row] for row in scores]
        values = [float(x) for x in scores]
        self.stats.update(values)
        return [self._norm(x) for x in values]
