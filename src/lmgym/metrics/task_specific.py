"""Task-specific measures: PARENT (table-to-text), intent accuracy (dialog), CommonGen coverage and copying."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lmgym.errors import InputError, NotFoundError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, register_metric
from lmgym.metrics.text import check_lengths, mean, ngrams, require_references, words

# --- PARENT ---------------------------------------------------------------------------------------

_EPSILON = 1e-5  # stands in for a zero factor inside geometric means (a zero would wipe out the others)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(max(v, _EPSILON)) for v in values) / len(values))


def parent_scores(
    generation: Sequence[str],
    reference: Sequence[str],
    table: Sequence[tuple[Sequence[str], Sequence[str]]],
    max_order: int = 4,
    lambda_weight: float | None = None,
    use_attributes: bool = False,
) -> tuple[float, float, float]:
    """PARENT (Dhingra et al., 2019) precision, recall and F1 of one tokenised generation against one
    tokenised reference and a table of (attribute tokens, value tokens) records.

    w(g), the probability that n-gram g is entailed by the table, is the word-overlap model: the share of
    g's tokens found among the table's value tokens (and attribute tokens with ``use_attributes``).

    - entailed precision of order n: Σ_g [c(g) + (#G(g) − c(g))·w(g)] / Σ_g #G(g) over the generation's
      n-grams, with c(g) = min(#G(g), #R(g)): an n-gram counts if the reference has it, else by how much
      the table entails it;
    - entailed recall against the reference, order n: Σ_g c(g)·w(g) / Σ_g #R(g)·w(g) over the reference's
      n-grams (reference content the table does not support does not count);
    - recall against the table: the mean over records of LCS(value, generation) / |value|;
    - P and E_r(R) are geometric means over orders 1..max_order; R = E_r(R)^(1−λ) · E_r(T)^λ with
      λ = 1 − (share of reference unigrams entailed by the table) unless ``lambda_weight`` is given;
    - F1 = 2PR / (P + R).

    An order with no n-grams in the generation counts as precision 0; with no entailed reference
    n-gram, recall 1 (nothing to recall).
    """
    table_tokens = {t for attr, value in table for t in (list(value) + (list(attr) if use_attributes else []))}

    def entailed(gram: tuple[str, ...]) -> float:
        return sum(1 for t in gram if t in table_tokens) / len(gram)

    precisions, ref_recalls = [], []
    for n in range(1, max_order + 1):
        gen_counts, ref_counts = Counter(ngrams(generation, n)), Counter(ngrams(reference, n))
        total = sum(gen_counts.values())
        if total == 0:
            precisions.append(0.0)
        else:
            credit = 0.0
            for gram, count in gen_counts.items():
                overlap = min(count, ref_counts[gram])
                credit += overlap + (count - overlap) * entailed(gram)
            precisions.append(credit / total)
        numerator = sum(min(gen_counts[g], c) * entailed(g) for g, c in ref_counts.items())
        denominator = sum(c * entailed(g) for g, c in ref_counts.items())
        ref_recalls.append(numerator / denominator if denominator > 0 else 1.0)
    precision = _geometric_mean(precisions)
    reference_recall = _geometric_mean(ref_recalls)
    values = [list(v) for _, v in table if len(v) > 0]
    table_recall = mean([_lcs_length(v, generation) / len(v) for v in values]) if values else 0.0
    if lambda_weight is None:
        unigrams = [(t,) for t in reference]
        lambda_weight = 1.0 - (mean([entailed(g) for g in unigrams]) if unigrams else 0.0)
    recall = math.exp(
        (1 - lambda_weight) * math.log(max(reference_recall, _EPSILON))
        + lambda_weight * math.log(max(table_recall, _EPSILON))
    )
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def _table(meta: dict[str, Any], index: int) -> list[tuple[list[str], list[str]]]:
    table = meta.get("table")
    if table is None:
        raise NotFoundError(f"parent: sample {index} has no meta['table'] (a list of (attribute, value) pairs)")
    try:
        return [(words(str(attr)), words(str(value))) for attr, value in table]
    except (TypeError, ValueError):
        raise InputError(
            f"parent: sample {index}: meta['table'] must be a list of (attribute, value) pairs, got {table!r:.100}"
        ) from None


@register_metric("parent", "PARENT precision/recall/F1 for table-to-text (table in meta['table']), best reference")
class Parent(Metric):
    """Per sample: the (P, R, F1) of the reference with the highest F1; corpus: the means (as the paper
    reports them). Tokens are lower-cased words (`lmgym.metrics.text.words`)."""

    name = "parent"

    def __init__(self, max_order: int = 4, lambda_weight: float | None = None, use_attributes: bool = False) -> None:
        self.max_order, self.lambda_weight, self.use_attributes = max_order, lambda_weight, use_attributes

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        require_references(self.name, generations, references)
        check_lengths(self.name, generations, references, meta)
        rows = []
        for i, (gen, refs, m) in enumerate(zip(generations, references, meta, strict=True)):
            table = _table(m, i)
            scores = [
                parent_scores(words(gen), words(r), table, self.max_order, self.lambda_weight, self.use_attributes)
                for r in refs
            ]
            rows.append(max(scores, key=lambda s: s[2]))
        out = {}
        for k, key in enumerate(("parent-precision", "parent-recall", "parent-f1")):
            values = [r[k] for r in rows]
            out[key] = MetricValue(values, mean(values))
        return out


# --- intent accuracy ------------------------------------------------------------------------------


@register_metric(
    "intent_accuracy",
    "dialog intent accuracy: meta['intent'] vs meta['predicted_intent'] or a classifier's prediction",
)
class IntentAccuracy(Metric):
    """1.0 where the response's intent matches the gold ``meta["intent"]``, else 0.0.

    The response's intent is ``meta["predicted_intent"]`` when present, else the top label of
    ``classifier`` (a local sequence classifier folder or hub id; with ``include_prompt`` it reads the
    dialog context followed by the response). Labels compare as strings, so an int gold label matches a
    classifier label name ``"2"`` or index 2 when the classifier's labels are named ``LABEL_2``."""

    name = "intent_accuracy"

    def __init__(self, classifier: str | None = None, include_prompt: bool = True, batch_size: int = 32) -> None:
        self.classifier, self.include_prompt, self.batch_size = classifier, include_prompt, batch_size
        self._model = None

    def predict(self, prompts: Sequence[str], generations: Sequence[str]) -> list[str]:
        from lmgym.models.classifiers import SequenceClassifier

        if self._model is None:
            self._model = SequenceClassifier(self.classifier, batch_size=self.batch_size)  # type: ignore[arg-type]
        texts = [f"{p} {g}" if self.include_prompt else g for p, g in zip(prompts, generations, strict=True)]
        return self._model.predict(texts)

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        check_lengths(self.name, generations, prompts, meta)
        for i, m in enumerate(meta):
            if "intent" not in m:
                raise NotFoundError(f"intent_accuracy: sample {i} has no meta['intent'] (the gold intent)")
        need = [i for i, m in enumerate(meta) if "predicted_intent" not in m]
        predicted: dict[int, str] = {i: str(m["predicted_intent"]) for i, m in enumerate(meta) if i not in need}
        if need:
            if self.classifier is None:
                raise InputError(
                    f"intent_accuracy: sample {need[0]} has no meta['predicted_intent'] and no classifier= was given"
                )
            labels = self.predict([prompts[i] for i in need], [generations[i] for i in need])
            predicted.update(zip(need, labels, strict=True))
        per_sample = [1.0 if _same_label(predicted[i], m["intent"]) else 0.0 for i, m in enumerate(meta)]
        return {self.name: MetricValue(per_sample, mean(per_sample))}


def _same_label(predicted: str, gold: Any) -> bool:
    p, g = str(predicted).strip().lower(), str(gold).strip().lower()
    return p == g or p == f"label_{g}"


# --- CommonGen ------------------------------------------------------------------------------------


def _stem(word: str) -> str:
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer().stem(word)


def _concepts(meta: dict[str, Any], index: int, metric: str) -> list[str]:
    concepts = meta.get("concepts")
    if not concepts or isinstance(concepts, str):
        raise NotFoundError(f"{metric}: sample {index} needs meta['concepts'], a non-empty list of words")
    return [str(c).lower() for c in concepts]


@register_metric(
    "commongen_coverage", "CommonGen: share of meta['concepts'] used in the generation (stem match)", "nltk"
)
class CommonGenCoverage(Metric):
    """A concept counts as covered when its Porter stem equals the stem of a generated word
    (``throw`` is covered by ``throws`` and ``throwing``)."""

    name = "commongen_coverage"

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        check_lengths(self.name, generations, prompts, meta)
        per_sample = []
        for i, (gen, m) in enumerate(zip(generations, meta, strict=True)):
            concepts = _concepts(m, i, self.name)
            stems = {_stem(w) for w in words(gen)}
            per_sample.append(sum(1 for c in concepts if _stem(c) in stems) / len(concepts))
        return {self.name: MetricValue(per_sample, mean(per_sample))}


@register_metric("commongen_copy_penalty", "CommonGen: −1 when the generation just repeats the concept list, else 0")
class CommonGenCopyPenalty(Metric):
    """−``penalty`` when the generation copies the concept list instead of writing a sentence: it contains
    the concepts as one contiguous run in the given order (``"dog catch ball"`` for the prompt
    ``generate a sentence with: dog catch ball.``), or it has no word besides the concepts and the
    prompt's own words. Added to METEOR as GRUE's CommonGen reward, it removes the payoff of the easy
    copy that METEOR would otherwise reward."""

    name = "commongen_copy_penalty"

    def __init__(self, penalty: float = 1.0) -> None:
        self.penalty = penalty

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        check_lengths(self.name, generations, prompts, meta)
        per_sample = []
        for i, (prompt, gen, m) in enumerate(zip(prompts, generations, meta, strict=True)):
            concepts = _concepts(m, i, self.name)
            tokens = [t for t in words(gen) if any(ch.isalnum() for ch in t)]
            in_order = any(tuple(tokens[j : j + len(concepts)]) == tuple(concepts) for j in range(len(tokens)))
            allowed = set(concepts) | set(words(prompt))
            nothing_new = bool(tokens) and all(t in allowed for t in tokens)
            per_sample.append(-self.penalty if in_order or nothing_new else 0.0)
        return {self.name: MetricValue(per_sample, mean(per_sample))}
