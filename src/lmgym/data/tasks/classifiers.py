"""Text classifiers that offline GRUE tasks need (review sentiment, dialogue intent), trained here.

Each is a softmax-regression head on the bundled sentence encoder's embeddings (all-MiniLM-L6-v2,
frozen), fit on the task's own offline data. Training takes seconds; the fitted head is cached in
``<lmgym cache>/classifiers/<name>-<hash>.safetensors``, where the hash covers the training texts,
labels and the encoder, so a changed generator retrains and an unchanged one never does.

`ProbabilityReward` turns a classifier into a reward: the probability of one label (a fixed label
such as "positive", or the label a sample's ``meta`` names, such as the reference turn's intent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmgym.errors import InputError
from lmgym.models.loading import cache_dir
from lmgym.rewards.base import Reward

log = logging.getLogger(__name__)

L2 = 1e-3  # weight decay of the head: the embeddings are near-separable, so an unregularised fit overshoots
FIT_STEPS = 200


@dataclass
class EmbeddingClassifier:
    """softmax(W·embed(text) + b) over ``labels``; ``encoder`` is the encoder name given to `embed`."""

    labels: tuple[str, ...]
    weight: torch.Tensor  # [n_labels, dim]
    bias: torch.Tensor  # [n_labels]
    encoder: str | None = None

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), n_labels]`` probabilities."""
        from lmgym.models.encoder import embed

        if not texts:
            return torch.zeros(0, len(self.labels))
        features = embed(list(texts), model=self.encoder)  # [n, dim], unit rows
        return torch.softmax(features @ self.weight.T + self.bias, dim=-1)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(-1).tolist()]

    def index(self, label: str | int) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(self.labels):
                raise InputError(f"label index {label} is out of range for labels {self.labels}")
            return label
        if label not in self.labels:
            raise InputError(f"unknown label {label!r}; the classifier knows {list(self.labels)}")
        return self.labels.index(label)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        meta = {"labels": json.dumps(list(self.labels)), "encoder": self.encoder or ""}
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)  # a killed run leaves no half-written head behind

    @classmethod
    def load(cls, path: Path) -> EmbeddingClassifier:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        return cls(tuple(json.loads(meta["labels"])), tensors["weight"], tensors["bias"], meta["encoder"] or None)


def fit_classifier(
    texts: Sequence[str], labels: Sequence[str], label_names: Sequence[str], encoder: str | None = None
) -> EmbeddingClassifier:
    """Softmax regression on frozen embeddings, full batch with L-BFGS (a convex problem: seconds)."""
    from lmgym.models.encoder import embed

    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise InputError(f"training labels {unknown} are not among the classifier's labels {list(label_names)}")
    features = embed(list(texts), model=encoder)  # [n, dim]
    targets = torch.tensor([list(label_names).index(y) for y in labels])
    weight = torch.zeros(len(label_names), features.shape[1], requires_grad=True)
    bias = torch.zeros(len(label_names), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets) + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return EmbeddingClassifier(tuple(label_names), weight.detach(), bias.detach(), encoder)


def cached_classifier(
    name: str,
    data: Callable[[], tuple[list[str], list[str]]],
    label_names: Sequence[str],
    encoder: str | None = None,
) -> EmbeddingClassifier:
    """The classifier fit to ``data()`` (texts, labels), from the disk cache when it was fit before."""
    from lmgym.models.encoder import resolve_encoder_path

    texts, labels = data()
    digest = hashlib.sha256(
        json.dumps([texts, labels, list(label_names), resolve_encoder_path(encoder)]).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "classifiers" / f"{name}-{digest}.safetensors"
    if path.exists():
        return EmbeddingClassifier.load(path)
    log.warning("training the %s classifier on %d offline texts (once; cached in %s)", name, len(texts), path)
    classifier = fit_classifier(texts, labels, label_names, encoder)
    classifier.save(path)
    return classifier


SENTIMENT_LABELS = ("negative", "positive")  # index = the IMDB label (0 negative, 1 positive)
INTENT_LABELS = ("inform", "question", "directive", "commissive")  # DailyDialog's dialogue acts 1-4


@lru_cache(maxsize=1)
def sentiment_classifier(n_reviews: int = 240, seed: int = 12_345) -> EmbeddingClassifier:
    """Positive vs negative, fit on offline IMDB reviews (whole reviews and their second halves, since
    the reward reads prompt + continuation while a continuation alone must also read as positive)."""
    from lmgym.data.tasks.imdb import offline_rows, review_halves

    def data() -> tuple[list[str], list[str]]:
        rows = offline_rows(seed, n_reviews, 0)["train"]
        texts = [r["text"] for r in rows] + [review_halves(r["text"])[1] for r in rows]
        labels = [SENTIMENT_LABELS[r["label"]] for r in rows] * 2
        return texts, labels

    return cached_classifier("imdb-sentiment", data, SENTIMENT_LABELS)


@lru_cache(maxsize=1)
def intent_classifier(n_dialogues: int = 300, seed: int = 12_345) -> EmbeddingClassifier:
    """The dialogue act of one utterance, fit on the turns of offline DailyDialog dialogues."""
    from lmgym.data.tasks.dailydialog import offline_rows

    def data() -> tuple[list[str], list[str]]:
        texts, labels = [], []
        for row in offline_rows(seed, n_dialogues, 0, 0)["train"]:
            for utterance, act in zip(row["dialog"], row["act"], strict=True):
                texts.append(utterance)
                labels.append(INTENT_LABELS[act - 1])
        # Deduplicate (templates repeat) so the hash and the fit see each distinct text once.
        pairs = sorted(set(zip(texts, labels, strict=True)))
        random.Random(seed).shuffle(pairs)
        return [t for t, _ in pairs], [y for _, y in pairs]

    return cached_classifier("dailydialog-intent", data, INTENT_LABELS)


class ProbabilityReward(Reward):
    """P(label | text) from an `EmbeddingClassifier`.

    ``label`` is a label name or index, or ``meta:<key>`` to read each sample's target label from its
    meta (e.g. ``meta:intent``). ``include_prompt`` scores prompt + generation (GRUE's IMDB reward)."""

    def __init__(
        self, classifier: EmbeddingClassifier, label: str | int, name: str, include_prompt: bool = False
    ) -> None:
        self.classifier = classifier
        self.meta_key = label[5:] if isinstance(label, str) and label.startswith("meta:") else None
        self.label_index = None if self.meta_key else classifier.index(label)
        self.name = name
        self.include_prompt = include_prompt

    def score(self, prompts, generations, references, meta) -> list[float]:
        texts = [f"{p} {g}" if self.include_prompt else g for p, g in zip(prompts, generations, strict=True)]
        probs = self.classifier.predict_proba(texts)  # [n, n_labels]
        out = []
        for i, row in enumerate(probs):
            if self.meta_key is None:
                out.append(float(row[self.label_index]))
                continue
            target: Any = meta[i].get(self.meta_key)
            if target is None:
                raise InputError(f"{self.name}: sample {i} has no meta[{self.meta_key!r}] to compare against")
            out.append(float(row[self.classifier.index(target)]))
        return out
