"""Any sequence classifier as a reward: the probability it gives a chosen label.

``ClassifierReward("path/to/sentiment-model", label="POSITIVE")`` scores each generation (or prompt +
generation, with ``include_prompt``) by the classifier's softmax probability of that label. The
classifier is a local folder (safetensors weights) or, with a network, a hub id; the label is its
index or its name in ``config.id2label`` (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmgym.errors import InputError
from lmgym.rewards.base import Reward


class SequenceClassifier:
    """A frozen text classifier with batched ``probabilities(texts)`` and ``predict_labels(texts)``."""

    def __init__(self, classifier: str, batch_size: int = 32, max_length: int = 512, device: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from lmgym.models.loading import ModelLoadError, check_safetensors, resolve_model_path

        if not classifier:
            raise InputError("classifier: give a local folder or hub id of a sequence classifier")
        source = resolve_model_path(classifier)
        if Path(source).is_dir():
            check_safetensors(Path(source))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=True)
        except OSError as err:
            raise ModelLoadError(
                f"could not load classifier {classifier!r}: {err}. Offline, give a local folder"
            ) from None
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.name = classifier
        self.batch_size = batch_size
        self.max_length = min(max_length, self.tokenizer.model_max_length or max_length)
        self.labels = {int(i): str(n) for i, n in self.model.config.id2label.items()}

    def label_index(self, label: str | int) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            if label not in self.labels:
                raise InputError(f"label {label} is not one of classifier {self.name!r}'s labels {self.labels}")
            return label
        matches = [i for i, n in self.labels.items() if n.lower() == str(label).lower()]
        if not matches:
            raise InputError(f"label {label!r} is not one of classifier {self.name!r}'s labels {self.labels}")
        return matches[0]

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        """Softmax probabilities ``[len(texts), num_labels]``."""
        rows = []
        self.tokenizer.truncation_side = "left"  # keep the end: the generation, not the prompt's start
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                [str(t) for t in texts[start : start + self.batch_size]],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            rows.append(torch.softmax(self.model(**enc).logits.float(), -1).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, len(self.labels))

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[int(i)] for i in self.probabilities(texts).argmax(-1)]


class ClassifierReward(Reward):
    """P(``label`` | text) from ``classifier``, per sample; the text is the generation, or the prompt
    followed by it when ``include_prompt`` (for classifiers that judge the whole exchange)."""

    def __init__(self, classifier: str, label: str | int, include_prompt: bool = False, batch_size: int = 32) -> None:
        self.model = SequenceClassifier(classifier, batch_size=batch_size)
        self.label = self.model.label_index(label)
        self.include_prompt = include_prompt
        self.name = f"p({self.model.labels[self.label]})"

    def score(self, prompts, generations, references, meta) -> list[float]:
        texts = [p + g if self.include_prompt else g for p, g in zip(prompts, generations, strict=True)]
        return self.model.probabilities(texts)[:, self.label].tolist()
