"""Task definition and the decorator that registers a task factory.

A task bundles train/val/test splits of `Sample`s, a default reward, the metrics
reported at evaluation, and the generation settings that suit it. `lmgym.data.registry`
imports the built-in tasks and looks tasks up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmgym.data.sample import Sample
from lmgym.errors import InputError, NotFoundError

SPLITS = ("train", "val", "test")
DEFAULT_MAX_NEW_TOKENS = 32  # a task that states no horizon


@dataclass
class Task:
    name: str
    splits: dict[str, list[Sample]]
    reward: Any  # lmgym.rewards.Reward; typed loosely to avoid an import cycle
    description: str = ""
    metrics: tuple[str, ...] = ("reward", "perplexity", "distinct")
    generation: dict[str, Any] = field(default_factory=dict)
    # Which end of an over-long prompt to cut ('left'/'right'); None: the model kind's default.
    truncation_side: str | None = None
    # Adds to each held-out sample's meta what a metric of the set needs from its generation (generations, meta)
    # -> meta; e.g. DailyDialog's predicted intent for intent_accuracy. None: the meta as it is.
    annotate: Callable[[list[str], list[dict[str, Any]]], list[dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        for split in SPLITS:
            if not self.splits.get(split):
                raise InputError(f"task {self.name!r}: split {split!r} is empty")

    def horizon(self, configured: int | None = None) -> int:
        """Generated tokens per episode: ``generation.max_new_tokens`` when the config sets it, else the task's."""
        return configured or int(self.generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            raise NotFoundError(f"task {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


_REGISTRY: dict[str, Callable[..., Task]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_task(name: str, description: str = "") -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    def wrap(factory: Callable[..., Task]) -> Callable[..., Task]:
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = description or (factory.__doc__ or "").strip().splitlines()[0]
        return factory

    return wrap
