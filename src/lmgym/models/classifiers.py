"""Text classifiers, frozen: any sequence classifier from a folder or the hub (`SequenceClassifier`), and a
softmax head on the bundled sentence encoder's embeddings fit in seconds (`EmbeddingClassifier`, for the
offline tasks that need review sentiment or dialogue intent; `cached_classifier` fits one once and keeps it
in ``<lmgym cache>/classifiers/``, keyed by a hash of the training texts, labels and encoder).

Both answer ``labels`` (names, in index order), ``index(label)``, ``probabilities(texts)`` ``[n, labels]``
and ``predict(texts)``; `lmgym.rewards.classifier.ClassifierReward` turns either into a reward.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmgym.errors import InputError
from lmgym.models.loading import ModelLoadError, cache_dir, check_safetensors, resolve_model_path

log = logging.getLogger(__name__)


def label_index(labels: Sequence[str], label: str | int, case_sensitive: bool, who: str) -> int:
    """The index of ``label`` (an index, or a name) among ``labels``; an error naming the labels otherwise."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(labels):
            raise InputError(f"label {label} is not one of {who}'s labels {list(labels)}")
        return label
    names = list(labels) if case_sensitive else [n.lower() for n in labels]
    wanted = str(label) if case_sensitive else str(label).lower()
    if wanted not in names:
        raise InputError(f"label {label!r} is not one of {who}'s labels {list(labels)}")
    return names.index(wanted)


class SequenceClassifier:
    """A frozen text classifier with batched ``probabilities(texts)`` and ``predict_labels(texts)``."""

    def __init__(self, classifier: str, batch_size: int = 32, max_length: int = 512, device: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

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
        id2label = {int(i): str(n) for i, n in self.model.config.id2label.items()}
        self.labels = tuple(id2label[i] for i in range(len(id2label)))

    def index(self, label: str | int) -> int:
        """A label's index, from the index itself or its name (case-insensitive)."""
        return label_index(self.labels, label, case_sensitive=False, who=f"classifier {self.name!r}")

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

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[int(i)] for i in self.probabilities(texts).argmax(-1)]


L2 = 1e-3  # weight decay of the head: the embeddings are near-separable, so an unregularised fit overshoots
FIT_STEPS = 200


@dataclass
class EmbeddingClassifier:
    """softmax(W·embed(text) + b) over ``labels``; ``encoder`` is the encoder name given to `embed`."""

    labels: tuple[str, ...]
    weight: torch.Tensor  # [n_labels, dim]
    bias: torch.Tensor  # [n_labels]
    encoder: str | None = None

    name = "embedding classifier"

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), n_labels]`` probabilities."""
        from lmgym.models.encoder import embed

        if not texts:
            return torch.zeros(0, len(self.labels))
        features = embed(list(texts), model=self.encoder)  # [n, dim], unit rows
        return torch.softmax(features @ self.weight.T + self.bias, dim=-1)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.probabilities(texts).argmax(-1).tolist()]

    def index(self, label: str | int) -> int:
        return label_index(self.labels, label, case_sensitive=True, who="the classifier")

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
