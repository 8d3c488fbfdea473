"""Lexical diversity of a set of generations (the GRUE diversity measures).

Tokens are lower-cased whitespace-separated words, the same tokens `distinct_n` uses in the
trainer's evaluation, so the numbers agree.

- ``msttr``: mean segmental type-token ratio: the generations joined into one token stream, cut into
  segments of ``window`` tokens, the mean over full segments of unique/total (a stream shorter than
  one window gives its own type-token ratio).
- ``distinct-n``: unique n-grams / all n-grams (Li et al., 2016).
- ``entropy-n``: Shannon entropy in bits of the n-gram frequency distribution.
- ``unique-n``: how many n-grams occur exactly once.
- ``vocab-size``: how many different words occur.

Per-sample values are the same measures inside one generation (repetition within a sample); the
corpus value pools all generations. MSTTR is corpus-only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from lmgym.errors import InputError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, register_metric
from lmgym.metrics.text import ngrams


def tokens(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams over the corpus,
    on lower-cased whitespace tokens. 0.0 when there are no n-grams."""
    counts = ngram_counts(texts, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def ngram_counts(texts: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(ngrams(tokens(text), n))
    return counts


def entropy(counts: Counter) -> float:
    """Shannon entropy in bits; 0.0 for an empty distribution."""
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def msttr(texts: Sequence[str], window: int = 100) -> float:
    stream = [t for text in texts for t in tokens(text)]
    if not stream:
        return 0.0
    if len(stream) < window:
        return len(set(stream)) / len(stream)
    segments = [stream[i : i + window] for i in range(0, len(stream) - window + 1, window)]
    return sum(len(set(s)) / window for s in segments) / len(segments)


def diversity_stats(texts: Sequence[str]) -> dict[str, float]:
    """Every measure except MSTTR, pooled over ``texts``."""
    out: dict[str, float] = {}
    for n in (1, 2):
        counts = ngram_counts(texts, n)
        total = sum(counts.values())
        out[f"distinct-{n}"] = len(counts) / total if total else 0.0
        out[f"entropy-{n}"] = entropy(counts)
        out[f"unique-{n}"] = float(sum(1 for c in counts.values() if c == 1))
    out["vocab-size"] = float(len(ngram_counts(texts, 1)))
    return out


@register_metric("diversity", "MSTTR, distinct-1/2, entropy-1/2, unique-1/2, vocabulary size of the generations")
class Diversity(Metric):
    name = "diversity"

    def __init__(self, window: int = 100) -> None:
        if window < 1:
            raise InputError(f"diversity: window must be >= 1, got {window}")
        self.window = window

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        corpus = diversity_stats(generations)
        per_sample = [diversity_stats([g]) for g in generations]
        result = {key: MetricValue([s[key] for s in per_sample], value) for key, value in corpus.items()}
        result["msttr"] = MetricValue(None, msttr(generations, self.window))
        return result
