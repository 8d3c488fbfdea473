"""Any classifier as a reward: the probability it gives a chosen label.

``ClassifierReward("path/to/sentiment-model", label="POSITIVE")`` scores each generation (or prompt +
generation, with ``include_prompt``) by the classifier's softmax probability of that label. The classifier is
a local folder (safetensors weights) or, with a network, a hub id, or any object with ``probabilities(texts)``
and ``index(label)`` (`lmgym.models.classifiers`); the label is its index, its name, or ``meta:<key>`` to read
each sample's target label from its meta (e.g. DailyDialog's ``meta:intent``).
"""

from __future__ import annotations

from typing import Any

from lmgym.errors import InputError
from lmgym.models.classifiers import SequenceClassifier
from lmgym.rewards.base import Reward


class ClassifierReward(Reward):
    """P(``label`` | text) per sample; the text is the generation, or the prompt, ``separator`` and the
    generation when ``include_prompt`` (for classifiers that judge the whole exchange)."""

    def __init__(
        self,
        classifier: str | Any,
        label: str | int,
        include_prompt: bool = False,
        batch_size: int = 32,
        separator: str = "",
        name: str | None = None,
    ) -> None:
        self.model = (
            SequenceClassifier(classifier, batch_size=batch_size) if isinstance(classifier, str) else classifier
        )
        self.meta_key = label[5:] if isinstance(label, str) and label.startswith("meta:") else None
        self.label = None if self.meta_key else self.model.index(label)
        self.include_prompt, self.separator = include_prompt, separator
        self.name = name or (f"p({self.meta_key})" if self.meta_key else f"p({self.model.labels[self.label]})")

    def score(self, prompts, generations, references, meta) -> list[float]:
        texts = [
            f"{p}{self.separator}{g}" if self.include_prompt else g for p, g in zip(prompts, generations, strict=True)
        ]
        probs = self.model.probabilities(texts)  # [n, labels]
        if self.meta_key is None:
            return probs[:, self.label].tolist()
        out = []
        for i, row in enumerate(probs):
            target = meta[i].get(self.meta_key)
            if target is None:
                raise InputError(f"{self.name}: sample {i} has no meta[{self.meta_key!r}] to compare against")
            out.append(float(row[self.model.index(target)]))
        return out
