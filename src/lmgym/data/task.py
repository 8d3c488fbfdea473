"""Task definition and registry.

A task bundles train/val/test splits of `Sample`s, a default reward, the metrics
reported at evaluation, and the generation settings that suit it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmgym.data.sample import Sample
from lmgym.errors import InputError, LmgymError, NotFoundError, UserCodeError

SPLITS = ("train", "val", "test")


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

    def __post_init__(self) -> None:
        for split in SPLITS:
            if not self.splits.get(split):
                raise InputError(f"task {self.name!r}: split {split!r} is empty")

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


def _ensure_builtin_tasks() -> None:
    # Importing the modules runs their @register_task decorators.
    # The GRUE tasks among them (imdb ... wmt16) each have a hub loader and an offline generator.
    from lmgym.data.tasks import (  # noqa: F401
        cnn_dailymail,
        commongen,
        dailydialog,
        dataset,
        imdb,
        iwslt2017,
        narrativeqa,
        sentiment,
        totto,
        toy,
        wmt16,
    )


def available_tasks() -> dict[str, str]:
    _ensure_builtin_tasks()
    return dict(sorted(_DESCRIPTIONS.items()))


def load_task(name: str, **options: Any) -> Task:
    _ensure_builtin_tasks()
    if name not in _REGISTRY:
        raise NotFoundError(f"unknown task {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        accepted = ", ".join(inspect.signature(factory).parameters) or "none"
        raise InputError(f"task_args for task {name!r}: {err} (it accepts: {accepted})") from None
    try:
        return factory(**options)
    except LmgymError:
        raise
    except Exception as err:  # a user's task factory, or a library it calls
        raise UserCodeError(f"task {name!r}", err) from err
