"""The reward interface.

A reward is any callable ``(prompts, generations, references, meta) -> scores``.
It returns one float per sample (a sequence-level reward, credited at the last
generated token) or, when ``per_token`` is true, one list per sample with a float
for every generated token. ``meta[i]`` carries the sample's own metadata plus
``gen_token_ids`` and ``gen_tokens`` (the generated token ids and their decoded
strings), so token-level rewards can see the exact actions taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lmgym.errors import InputError, LmgymError, WrongTypeError

Scores = list[float] | list[list[float]]


class RewardError(LmgymError, ValueError):
    """A reward returned something other than finite floats of the right shape.

    ``index`` is the offending sample's position in the batch, when one sample is at fault."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class Reward:
    """Base class. Subclasses set ``name`` and ``per_token`` and implement ``score``.

    A reward that wraps others lists them in `children`; one with running state (e.g. normalisation
    statistics) returns it from `state_dict`, so that checkpoints keep it and a resumed run is exact. While
    ``frozen`` is set (held-out evaluation, logged data) a training-only transform steps aside: scores are
    on the reward's own scale, comparable before and after training, and no running state moves."""

    name: str = "reward"
    per_token: bool = False
    frozen: bool = False

    def children(self) -> list[Reward]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def score(
        self,
        prompts: Sequence[str],
        generations: Sequence[str],
        references: Sequence[Sequence[str]],
        meta: Sequence[dict[str, Any]],
    ) -> Scores:
        raise NotImplementedError

    def __call__(self, prompts, generations, references, meta) -> Scores:
        return self.score(prompts, generations, references, meta)


class FunctionReward(Reward):
    """Wraps a plain Python function with the reward signature."""

    def __init__(self, fn: Callable[..., Scores], per_token: bool = False, name: str | None = None) -> None:
        self.fn = fn
        self.per_token = per_token
        self.name = name or getattr(fn, "__name__", "reward")

    def score(self, prompts, generations, references, meta) -> Scores:
        return self.fn(prompts, generations, references, meta)


def walk(reward: Reward | Callable[..., Scores], path: str = "reward") -> Iterator[tuple[str, Reward]]:
    """Every reward in the tree under ``reward`` with its path ('reward', 'reward.0', 'reward.0.1', ...);
    a plain function is a stateless leaf."""
    reward = as_reward(reward)
    yield path, reward
    for i, child in enumerate(reward.children()):
        yield from walk(child, f"{path}.{i}")


def reward_state(reward: Reward) -> dict[str, Any]:
    """The running state of every stateful reward in the tree, by path (JSON-able; {} for stateless trees)."""
    return {path: state for path, node in walk(reward) if (state := node.state_dict())}


def load_reward_state(reward: Reward, state: dict[str, Any]) -> None:
    nodes = {path: node for path, node in walk(reward) if node.state_dict()}  # the stateful ones
    unknown = sorted(set(state) - set(nodes))
    if unknown:
        raise InputError(f"the checkpoint holds reward state for {unknown}, which this run's reward does not have")
    for path, node_state in state.items():
        nodes[path].load_state_dict(node_state)


@contextmanager
def frozen(reward: Reward) -> Iterator[None]:
    """Score on the reward's own scale without changing any running state (evaluation, logged data)."""
    nodes = [node for _, node in walk(reward)]
    previous = [node.frozen for node in nodes]
    for node in nodes:
        node.frozen = True
    try:
        yield
    finally:
        for node, was in zip(nodes, previous, strict=True):
            node.frozen = was


def as_reward(obj: Reward | Callable[..., Scores]) -> Reward:
    if isinstance(obj, Reward):
        return obj
    if callable(obj):
        return FunctionReward(obj, per_token=bool(getattr(obj, "per_token", False)))
    raise WrongTypeError(f"a reward must be callable, got {type(obj).__name__}")


def check_scores(reward: Reward, scores: Any, gen_lengths: Sequence[int]) -> list[list[float]] | list[float]:
    """Validate a reward's output; name the reward and the sample on failure."""
    n = len(gen_lengths)
    name = getattr(reward, "name", type(reward).__name__)
    if not isinstance(scores, (list, tuple)) and hasattr(scores, "tolist"):
        scores = scores.tolist()
    if not isinstance(scores, (list, tuple)) or len(scores) != n:
        got = len(scores) if isinstance(scores, (list, tuple)) else type(scores).__name__
        raise RewardError(f"reward {name!r} must return {n} scores (one per sample), got {got}")
    out: list = []
    for i, value in enumerate(scores):
        if reward.per_token:
            if not isinstance(value, (list, tuple)) or len(value) != gen_lengths[i]:
                raise RewardError(
                    f"per-token reward {name!r}: sample {i} needs {gen_lengths[i]} scores, got {value!r:.80}", i
                )
            row = [_as_finite(name, i, v) for v in value]
            out.append(row)
        else:
            out.append(_as_finite(name, i, value))
    return out


def _as_finite(name: str, index: int, value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise RewardError(f"reward {name!r} returned a non-number for sample {index}: {value!r:.80}", index) from None
    if isinstance(value, bool) or not math.isfinite(f):
        raise RewardError(
            f"reward {name!r} returned {value!r} for sample {index}; rewards must be finite floats", index
        )
    return f
