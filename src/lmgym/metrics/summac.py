"""SummaC-ZS (Laban et al., 2022): zero-shot factual consistency of a summary with its source, by NLI.

Both texts are split into sentences. Every (source sentence, summary sentence) pair goes through an
NLI model as (premise, hypothesis); the pair's score is P(entailment) − P(contradiction). A summary
sentence keeps its best-supported score (max over source sentences), and the summary scores the mean
over its sentences. Scores lie in [−1, 1].

The NLI model is any local sequence classifier whose labels include entailment and contradiction
(found by name in ``config.id2label``, or given as indices), or a plain function
``nli(premises, hypotheses) -> (p_entail, p_contradict)`` for custom models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lmgym.errors import InputError, NotFoundError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, register_metric
from lmgym.metrics.text import check_lengths, mean, sentences

NLIFunction = Callable[[Sequence[str], Sequence[str]], tuple[Sequence[float], Sequence[float]]]


def summac_zs_score(
    source_sentences: Sequence[str], summary_sentences: Sequence[str], nli: NLIFunction
) -> tuple[float, list[list[float]]]:
    """The SummaC-ZS score and its matrix ``[source sentence][summary sentence]`` of P(e) − P(c)."""
    if not source_sentences or not summary_sentences:
        return 0.0, []
    premises = [s for s in source_sentences for _ in summary_sentences]
    hypotheses = [h for _ in source_sentences for h in summary_sentences]
    entail, contradict = nli(premises, hypotheses)
    k = len(summary_sentences)
    matrix = [
        [float(entail[i * k + j]) - float(contradict[i * k + j]) for j in range(k)]
        for i in range(len(source_sentences))
    ]
    best_per_summary_sentence = [max(row[j] for row in matrix) for j in range(k)]
    return mean(best_per_summary_sentence), matrix


class NLIModel:
    """P(entailment) and P(contradiction) from a local sequence classifier folder (safetensors)."""

    def __init__(
        self,
        path: str,
        entailment_label: int | str | None = None,
        contradiction_label: int | str | None = None,
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from lmgym.models.loading import check_safetensors, resolve_model_path

        source = resolve_model_path(path)
        if Path(source).is_dir():
            check_safetensors(Path(source))
        self.model = AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        labels = {int(i): str(name).lower() for i, name in self.model.config.id2label.items()}
        self.entail = _label_index(labels, entailment_label, "entail", "entailment_label", path)
        self.contradict = _label_index(labels, contradiction_label, "contradict", "contradiction_label", path)
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, premises: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[float], list[float]]:
        import torch

        entail: list[float] = []
        contradict: list[float] = []
        with torch.no_grad():
            for i in range(0, len(premises), self.batch_size):
                enc = self.tokenizer(
                    list(premises[i : i + self.batch_size]),
                    list(hypotheses[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                probs = torch.softmax(self.model(**enc).logits.float(), -1)  # [batch, labels]
                entail += probs[:, self.entail].tolist()
                contradict += probs[:, self.contradict].tolist()
        return entail, contradict


def _label_index(labels: dict[int, str], given: int | str | None, stem: str, field: str, path: str) -> int:
    if isinstance(given, int):
        if given not in labels:
            raise InputError(f"summac: {field}={given} but the NLI model {path} has labels {sorted(labels)}")
        return given
    wanted = given.lower() if isinstance(given, str) else stem
    found = [i for i, name in labels.items() if name.startswith(wanted) or (given is None and stem in name)]
    if len(found) != 1:
        raise InputError(
            f"summac: cannot tell which label of {path} is {stem}ment/{stem}ion from id2label {labels}; "
            f"pass {field}= (an index or a label name)"
        )
    return found[0]


@register_metric(
    "summac",
    "SummaC-ZS: sentence-level NLI entailment minus contradiction, max over source, mean over summary",
    "nli_model= (or $LMGYM_NLI_MODEL): a local NLI sequence classifier",
)
class SummaC(Metric):
    """``nli_model``: a local NLI classifier folder (or ``$LMGYM_NLI_MODEL``), or a function
    ``(premises, hypotheses) -> (p_entail, p_contradict)``. ``source``: where the document is, ``"prompt"``
    (a summarisation prompt holds the article) or ``"meta:<key>"`` (e.g. ``meta:document``)."""

    name = "summac"
    requires = "nli_model= (or $LMGYM_NLI_MODEL): a local NLI model folder"

    def __init__(
        self,
        nli_model: str | NLIFunction | None = None,
        source: str = "prompt",
        entailment_label: int | str | None = None,
        contradiction_label: int | str | None = None,
        batch_size: int = 32,
    ) -> None:
        if source != "prompt" and not source.startswith("meta:"):
            raise InputError(f"summac: source must be 'prompt' or 'meta:<key>', got {source!r}")
        self.nli_spec = nli_model or os.environ.get("LMGYM_NLI_MODEL")
        self.source = source
        self.label_args = (entailment_label, contradiction_label)
        self.batch_size = batch_size
        self._nli: NLIFunction | None = self.nli_spec if callable(self.nli_spec) else None

    def missing(self) -> str | None:
        if self.nli_spec is None:
            return (
                "SummaC needs an NLI model: pass nli_model=/path/to/folder (a sequence classifier with entailment and "
                "contradiction labels, e.g. an MNLI model saved with save_pretrained) or set LMGYM_NLI_MODEL"
            )
        if isinstance(self.nli_spec, str) and not Path(self.nli_spec).expanduser().is_dir():
            return f"nli_model {self.nli_spec!r} is not a folder on this machine (offline, a local path is needed)"
        return None

    def nli(self) -> NLIFunction:
        if self._nli is None:
            self._nli = NLIModel(str(self.nli_spec), *self.label_args, batch_size=self.batch_size)
        return self._nli

    def document(self, prompt: str, meta: dict, index: int) -> str:
        if self.source == "prompt":
            return prompt
        key = self.source.split(":", 1)[1]
        if key not in meta:
            raise NotFoundError(f"summac: sample {index} has no meta[{key!r}] (source={self.source!r})")
        return str(meta[key])

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        check_lengths(self.name, generations, prompts)
        meta = meta if meta is not None else [{}] * len(generations)
        per_sample = [
            summac_zs_score(sentences(self.document(p, m, i)), sentences(g), self.nli())[0]
            for i, (p, g, m) in enumerate(zip(prompts, generations, meta, strict=True))
        ]
        return {self.name: MetricValue(per_sample, mean(per_sample))}
