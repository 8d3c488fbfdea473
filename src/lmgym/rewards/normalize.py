"""Reward normalisation by running statistics.

`RunningNormalize` divides by (and optionally centres on) the running standard deviation (mean) of
every score seen so far, a common way to keep the scale of the advantage stable when a reward's
range is unknown or drifts (Ziegler et al. normalise their reward model's output the same way).
Statistics update with each batch before it is normalised (Chan et al.'s parallel form of Welford's
algorithm), so the first batch is already on a unit scale. Per-token rewards pool all tokens.

The statistics are checkpointed with the run (`Reward.state_dict`). Held-out evaluation and logged data
(`Reward.frozen`) see the reward's own scale, neither normalised nor moving the statistics, so that the
scores before and after training are comparable. With several processes the statistics are those of the
global batch: each process's count, sum and sum of squares are added up over the processes
(``sum_over_processes``, set by the trainer) before the update, so every process normalises alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lmgym.rewards.base import Reward, Scores, as_reward

SumOverProcesses = Callable[[list[float]], list[float]]


class RunningMeanStd:
    """Running count, mean and variance of a stream of numbers."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float], sum_over_processes: SumOverProcesses | None = None) -> None:
        """Fold in a batch; ``sum_over_processes`` adds [count, Σx, Σx²] up over the processes (global batch)."""
        if sum_over_processes is None:
            n = len(values)
            if not n:
                return
            batch_mean = sum(values) / n
            batch_m2 = sum((v - batch_mean) ** 2 for v in values)  # two passes: no cancellation
        else:
            sums = [float(len(values)), math.fsum(values), math.fsum(v * v for v in values)]
            count, total_x, total_x2 = sum_over_processes(sums)
            n = round(count)
            if not n:
                return
            batch_mean = total_x / n
            batch_m2 = max(total_x2 - n * batch_mean**2, 0.0)
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
        self.sum_over_processes: SumOverProcesses | None = None

    def children(self) -> list[Reward]:
        return [self.inner]

    def state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)

    def _update(self, values: list[float]) -> None:
        self.stats.update(values, self.sum_over_processes)

    def _norm(self, x: float) -> float:
        return ((x - self.stats.mean) if self.center else x) / (self.stats.std + self.eps)

    def score(self, prompts, generations, references, meta) -> Scores:
        scores = self.inner(prompts, generations, references, meta)
        if self.frozen:  # held-out evaluation: the reward's own scale, comparable before and after training
            return scores
        if self.per_token:
            self._update([float(x) for row in scores for x in row])
            return [[self._norm(float(x)) for x in row] for row in scores]
        values = [float(x) for x in scores]
        self._update(values)
        return [self._norm(x) for x in values]
