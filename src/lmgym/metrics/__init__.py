"""Evaluation metrics, each usable as a reward (`lmgym metrics` lists them).

`load_metric(name, **options)` builds one from the registry; `MetricReward(metric, key)` turns one of
its per-sample values into a reward.
"""

from lmgym.metrics.base import (
    Metric,
    MetricReward,
    MetricValue,
    MissingRequirement,
    RewardMetric,
    load_metric,
    metric_infos,
    register_metric,
)
from lmgym.metrics.diversity import distinct_n

__all__ = [
    "Metric",
    "MetricReward",
    "MetricValue",
    "MissingRequirement",
    "RewardMetric",
    "distinct_n",
    "load_metric",
    "metric_infos",
    "register_metric",
]
