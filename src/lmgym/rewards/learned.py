"""Learned scorers as metrics: any sequence classifier, and a reward model trained by ``lmgym rm train``."""

from __future__ import annotations

from lmgym.metrics.base import Metric, register_metric
from lmgym.rewards.metric import RewardMetric


@register_metric(
    "classifier",
    "probability of a label under any sequence classifier (local folder or hub id)",
    "classifier= a sequence classifier, label= one of its labels",
)
def classifier_metric(classifier: str, label: str | int, include_prompt: bool = False, batch_size: int = 32) -> Metric:
    from lmgym.rewards.classifier import ClassifierReward

    return RewardMetric(ClassifierReward(classifier, label, include_prompt, batch_size), name="classifier")


@register_metric(
    "reward_model",
    "score of a reward model trained with `lmgym rm train`",
    "path= the trained reward model's folder",
)
def reward_model_metric(path: str) -> Metric:
    from lmgym.rewards.reward_model import RewardModelReward

    return RewardMetric(RewardModelReward(path), name="reward_model")
