"""Small text helpers the metrics share: input checks that name the sample, tokenisation, n-grams."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmgym.errors import InputError, WrongTypeError

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def check_lengths(metric: str, generations: Sequence[str], references: Sequence[Sequence[str]], meta=None) -> None:
    if isinstance(generations, str):
        raise WrongTypeError(f"metric {metric!r}: generations must be a list of strings, not one string")
    if len(references) != len(generations):
        raise InputError(f"metric {metric!r}: {len(generations)} generations but {len(references)} reference lists")
    if meta is not None and len(meta) != len(generations):
        raise InputError(f"metric {metric!r}: {len(generations)} generations but {len(meta)} meta entries")


def require_references(metric: str, generations: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Every sample needs at least one reference string (a list of strings, not one string)."""
    check_lengths(metric, generations, references)
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise WrongTypeError(f"metric {metric!r}: sample {i}: references must be a list of strings, got one string")
        if len(refs) == 0:
            raise InputError(f"metric {metric!r}: sample {i} has no reference; this metric compares with references")


def words(text: str, lower: bool = True) -> list[str]:
    """Words and punctuation marks as separate tokens (``"Don't stop!"`` → ``["don't", "stop", "!"]``)."""
    return _WORD.findall(text.lower() if lower else text)


def sentences(text: str) -> list[str]:
    """A light sentence split on ., ! and ? followed by whitespace (no model, no download)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
