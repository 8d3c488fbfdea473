"""Composing rewards: weighted sums, products, affine maps, clipping, lazy construction, per-token shaping.

Sequence-level and per-token rewards mix: when any part of a sum is per-token, the sum is per-token
and each sequence-level part is credited at the sample's last generated token (where the trainer
credits sequence rewards anyway), so totals over a sample are unchanged by the mixing. A product is
sequence-level only (a product of token rewards has no clear meaning).

``meta[i]["gen_token_ids"]`` (set by the trainer) gives each sample's generated length; per-token
composition needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from lmgym.errors import InputError
from lmgym.rewards.base import Reward, Scores, as_reward, walk


def _gen_lengths(meta: Sequence[dict[str, Any]], who: str) -> list[int]:
    lengths = []
    for i, m in enumerate(meta):
        if not m or "gen_token_ids" not in m:
            raise InputError(f"{who}: sample {i} lacks meta['gen_token_ids'], which per-token rewards need")
        lengths.append(len(m["gen_token_ids"]))
    return lengths


def at_last_token(scores: Sequence[float], lengths: Sequence[int]) -> list[list[float]]:
    """A sequence reward as per-token rewards: zeros, and the score on the last token."""
    return [[0.0] * (n - 1) + [float(s)] if n > 0 else [] for s, n in zip(scores, lengths, strict=True)]


class LazyReward(Reward):
    """A reward whose construction waits for its first call, so a task imports (and its data loads)
    without the metric packages, classifiers or models its reward needs."""

    def __init__(self, name: str, build: Callable[[], Reward], per_token: bool = False) -> None:
        self.name = name
        self.per_token = per_token
        self._build = build
        self._reward: Reward | None = None

    @property
    def reward(self) -> Reward:
        if self._reward is None:
            self._reward = as_reward(self._build())
        return self._reward

    def children(self) -> list[Reward]:
        return [self._reward] if self._reward is not None else []

    def score(self, prompts, generations, references, meta):
        return self.reward(prompts, generations, references, meta)


class Affine(Reward):
    """``offset + scale · reward`` (per sample, or per token for a per-token reward)."""

    def __init__(self, inner: Reward, scale: float, offset: float) -> None:
        self.inner, self.scale, self.offset = as_reward(inner), float(scale), float(offset)
        self.per_token = self.inner.per_token
        base = getattr(self.inner, "name", "reward")
        self.name = base if (self.scale, self.offset) == (1.0, 0.0) else f"affine({base})"

    def children(self) -> list[Reward]:
        return [self.inner]

    def score(self, prompts, generations, references, meta) -> Scores:
        scores = self.inner(prompts, generations, references, meta)
        if self.per_token:
            return [[self.offset + self.scale * float(x) for x in row] for row in scores]
        return [self.offset + self.scale * float(x) for x in scores]


class Composed(Reward):
    """A reward made of weighted parts. It keeps each part's scores of its last call (``last_part_scores``: per
    part, one float per sample, a per-token part summed over its tokens), so that the training log can show
    what each part gave a sample (`part_scores`) without scoring it twice."""

    parts: list[tuple[float, Reward]]
    last_part_scores: list[list[float]] | None = None

    def children(self) -> list[Reward]:
        return [r for _, r in self.parts]

    def _score_parts(self, prompts, generations, references, meta) -> list[Scores]:
        scores = [reward(prompts, generations, references, meta) for _, reward in self.parts]
        try:
            self.last_part_scores = [[_sample_total(s) for s in part] for part in scores]
        except (TypeError, ValueError):  # a malformed score: the caller's combination reports it
            self.last_part_scores = None
        return scores


def _sample_total(score: Any) -> float:
    """A sample's score, summed over its tokens for a per-token reward."""
    return float(sum(float(x) for x in score)) if hasattr(score, "__len__") else float(score)


class WeightedSum(Composed):
    """Σ wᵢ · rewardᵢ per sample (per token when any part is per-token)."""

    def __init__(self, parts: Sequence[tuple[float, Reward]], name: str = "weighted_sum") -> None:
        if not parts:
            raise InputError("WeightedSum needs at least one part")
        self.parts = [(float(w), as_reward(r)) for w, r in parts]
        self.name = name
        self.per_token = any(r.per_token for _, r in self.parts)

    def score(self, prompts, generations, references, meta) -> Scores:
        n = len(generations)
        if not self.per_token:
            total = [0.0] * n
            scored = self._score_parts(prompts, generations, references, meta)
            for (weight, _), scores in zip(self.parts, scored, strict=True):
                total = [t + weight * float(s) for t, s in zip(total, scores, strict=True)]
            return total
        lengths = _gen_lengths(meta, f"reward {self.name!r}")
        rows = [[0.0] * k for k in lengths]
        scored = self._score_parts(prompts, generations, references, meta)
        for (weight, reward), scores in zip(self.parts, scored, strict=True):
            token_scores = scores if reward.per_token else at_last_token(scores, lengths)
            for row, part in zip(rows, token_scores, strict=True):
                for t, value in enumerate(part):
                    row[t] += weight * float(value)
        return rows


class Product(Composed):
    """Π rewardᵢ^wᵢ per sample (weights are exponents; 1 for a plain product). Sequence-level parts only."""

    def __init__(self, parts: Sequence[tuple[float, Reward]], name: str = "product") -> None:
        if not parts:
            raise InputError("Product needs at least one part")
        self.parts = [(float(w), as_reward(r)) for w, r in parts]
        per_token = [getattr(r, "name", "?") for _, r in self.parts if r.per_token]
        if per_token:
            raise InputError(f"Product takes sequence-level rewards only; {per_token[0]!r} is per-token")
        self.name = name

    def score(self, prompts, generations, references, meta) -> list[float]:
        total = [1.0] * len(generations)
        scored = self._score_parts(prompts, generations, references, meta)
        for (weight, _), scores in zip(self.parts, scored, strict=True):
            total = [t * float(s) ** weight for t, s in zip(total, scores, strict=True)]
        return total


def part_scores(reward: Reward, n: int) -> dict[str, list[float]]:
    """The score each part of every sum or product in ``reward``'s tree gave each of the ``n`` samples of its
    last call, by the part's name (``name#2``, ... when two parts share one). A call on another batch
    (incremental shaping scores every prefix) does not match ``n`` and is left out."""
    out: dict[str, list[float]] = {}
    for _, node in walk(reward):
        if not isinstance(node, Composed) or node.last_part_scores is None:
            continue
        for (_, part), scores in zip(node.parts, node.last_part_scores, strict=True):
            if len(scores) != n:
                continue
            name = key = getattr(part, "name", "reward")
            copy = 1
            while key in out:
                copy += 1
                key = f"{name}#{copy}"
            out[key] = scores
    return out


class Clip(Reward):
    """Each score (each token's, for a per-token reward) clipped to [low, high]; None leaves a side open."""

    def __init__(self, inner: Reward, low: float | None = None, high: float | None = None) -> None:
        if low is not None and high is not None and low > high:
            raise InputError(f"Clip: low ({low}) > high ({high})")
        self.inner, self.low, self.high = as_reward(inner), low, high
        self.per_token = self.inner.per_token
        self.name = getattr(self.inner, "name", "reward")

    def children(self) -> list[Reward]:
        return [self.inner]

    def _clip(self, x: Any) -> float:
        x = float(x)
        if self.low is not None:
            x = max(self.low, x)
        if self.high is not None:
            x = min(self.high, x)
        return x

    def score(self, prompts, generations, references, meta) -> Scores:
        scores = self.inner(prompts, generations, references, meta)
        if self.per_token:
            return [[self._clip(x) for x in row] for row in scores]
        return [self._clip(x) for x in scores]


class PerToken(Reward):
    """A sequence-level reward turned into per-token rewards.

    - ``"last"``: all of it on the last token;
    - ``"uniform"``: each of the n tokens gets 1/n of it (the same total, a denser signal);
    - ``"incremental"``: token t gets R(y_≤t) − R(y_<t), the reward of the text so far minus that before
      it (prefixes joined from ``meta["gen_tokens"]``); the sum telescopes to R(y) − R(""), so the return
      is the sequence reward shifted by a constant, and each token is credited with what it added. It
      scores every prefix, so it suits cheap rewards (n-gram metrics, lexicons).
    """

    per_token = True

    def __init__(self, inner: Reward, mode: Literal["last", "uniform", "incremental"] = "uniform") -> None:
        if mode not in ("last", "uniform", "incremental"):
            raise InputError(f"PerToken: mode must be 'last', 'uniform' or 'incremental', got {mode!r}")
        self.inner, self.mode = as_reward(inner), mode
        if self.inner.per_token:
            raise InputError(f"PerToken: {getattr(self.inner, 'name', 'reward')!r} is per-token already")
        self.name = getattr(self.inner, "name", "reward")

    def children(self) -> list[Reward]:
        return [self.inner]

    def score(self, prompts, generations, references, meta) -> list[list[float]]:
        lengths = _gen_lengths(meta, f"reward {self.name!r}")
        if self.mode == "incremental":
            return self._incremental(prompts, references, meta)
        scores = self.inner(prompts, generations, references, meta)
        if self.mode == "last":
            return at_last_token(scores, lengths)
        return [[float(s) / n] * n if n else [] for s, n in zip(scores, lengths, strict=True)]

    def _incremental(self, prompts, references, meta) -> list[list[float]]:
        # One batched call over every prefix (the empty one included) of every sample.
        owners, prefixes = [], []
        for i, m in enumerate(meta):
            if "gen_tokens" not in m:
                raise InputError(f"reward {self.name!r}: sample {i} lacks meta['gen_tokens'] (incremental shaping)")
            pieces = list(m["gen_tokens"])
            for t in range(len(pieces) + 1):
                owners.append(i)
                prefixes.append("".join(pieces[:t]))
        scores = self.inner(
            [prompts[i] for i in owners], prefixes, [references[i] for i in owners], [meta[i] for i in owners]
        )
        rows: list[list[float]] = [[] for _ in meta]
        previous: dict[int, float] = {}
        for i, value in zip(owners, scores, strict=True):
            if i in previous:
                rows[i].append(float(value) - previous[i])
            previous[i] = float(value)
        return rows
