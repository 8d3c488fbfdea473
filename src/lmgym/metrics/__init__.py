"""Evaluation metrics, each usable as a reward (`lmgym metrics` lists them).

`lmgym.rewards.catalog.load_metric(name, **options)` builds one from the registry;
`lmgym.rewards.metric.MetricReward(metric, key)` turns one of its per-sample values into a reward.
"""

from lmgym.metrics.base import Metric, MetricValue, MissingRequirement, register_metric
from lmgym.metrics.diversity import distinct_n

__all__ = ["Metric", "MetricValue", "MissingRequirement", "distinct_n", "register_metric"]
