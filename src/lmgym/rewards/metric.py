"""Metrics as rewards and rewards as metrics: the two adapters between the registries' two views.

They live here, above both, so that metrics never import rewards (lmgym's import direction)."""

from __future__ import annotations

from lmgym.errors import InputError, NotFoundError
from lmgym.metrics.base import Metric, MetricResult, MetricValue
from lmgym.rewards.base import Reward


class MetricReward(Reward):
    """One per-sample value of a metric, as a sequence-level reward."""

    def __init__(self, metric: Metric, key: str | None = None) -> None:
        self.metric = metric
        self.key = key
        self.name = key or metric.name

    def score(self, prompts, generations, references, meta) -> list[float]:
        result = self.metric(prompts, generations, references, meta)
        key = self.key or (self.metric.name if self.metric.name in result else next(iter(result)))
        if key not in result:
            raise NotFoundError(f"metric {self.metric.name!r} reports {sorted(result)}, not {key!r}")
        if result[key].per_sample is None:
            raise InputError(f"metric {key!r} is corpus-level only; it has no per-sample value to use as a reward")
        return list(result[key].per_sample)


class RewardMetric(Metric):
    """A reward reported as a metric: its per-sample scores (summed over tokens if per-token) and their mean."""

    def __init__(self, reward: Reward, name: str | None = None) -> None:
        self.reward = reward
        self.name = name or getattr(reward, "name", "reward")

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        scores = self.reward(prompts, generations, references, meta)
        per_sample = [float(sum(s)) if isinstance(s, (list, tuple)) else float(s) for s in scores]
        corpus = sum(per_sample) / len(per_sample) if per_sample else float("nan")
        return {self.name: MetricValue(per_sample, corpus)}
