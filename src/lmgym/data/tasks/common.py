"""Pieces the GRUE task modules share: split sizes, seeded subsets, row → Sample conversion with errors
that name the row, and rewards built lazily from the metric registry."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from lmgym.data.hub import DataFormatError, Rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task
from lmgym.errors import InputError
from lmgym.rewards.base import Reward
from lmgym.rewards.compose import Affine, LazyReward, WeightedSum  # noqa: F401  (composition lives in rewards/)

log = logging.getLogger(__name__)

OUR_SPLITS = ("train", "val", "test")
# (our split, hub split) for hub datasets with train/validation/test splits.
HUB_SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))


def distinct_draws(
    seed: int,
    n: int,
    draw: Callable[[random.Random, int], tuple[str, dict[str, Any]] | None],
    what: str = "prompts",
) -> list[tuple[str, dict[str, Any]]]:
    """`n` (text, meta) pairs with distinct texts, in draw order, from ``draw(rng, k)`` (k: how many are kept
    so far; None rejects the draw) with ``random.Random(seed)``; an error after 50·n + 1000 draws."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = []
    for _ in range(50 * n + 1000):
        if len(out) == n:
            return out
        drawn = draw(rng, len(out))
        if drawn is not None and drawn[0] not in seen:
            seen.add(drawn[0])
            out.append(drawn)
    if len(out) == n:
        return out
    raise InputError(f"could only build {len(out)} distinct {what}, asked for {n}")


def resolve_sizes(
    n_train: int | None, n_val: int | None, n_test: int | None, offline_defaults: tuple[int, int, int], offline: bool
) -> dict[str, int | None]:
    """Requested split sizes; ``None`` means all rows of a hub split and the task's default size offline."""
    sizes = dict(zip(OUR_SPLITS, (n_train, n_val, n_test), strict=True))
    for split, size in sizes.items():
        if size is not None and size < 1:
            raise InputError(f"n_{split} must be >= 1, got {size}")
    if offline:
        return {s: (n if n is not None else d) for (s, n), d in zip(sizes.items(), offline_defaults, strict=True)}
    return sizes


def offline_counts(sizes: dict[str, int | None], defaults: tuple[int, int, int]) -> tuple[int, int, int]:
    """Rows the offline generator makes per split: the asked size, else the default."""
    return tuple(sizes[s] if sizes[s] is not None else d for s, d in zip(OUR_SPLITS, defaults, strict=True))  # type: ignore[return-value]


def take(rows: Rows, n: int | None, seed: int) -> Rows:
    """``n`` rows chosen with a seeded draw (kept in their original order); all of them when ``n`` is None.

    Drawing instead of slicing matters on the hub: some splits are sorted (IMDB's train split holds all
    negative reviews first)."""
    if n is None or n >= len(rows):
        return rows
    return rows.select(sorted(random.Random(seed).sample(range(len(rows)), n)))


def take_splits(splits: Mapping[str, Rows], sizes: dict[str, int | None], seed: int) -> dict[str, Rows]:
    """Our train/val/test from the hub's train/validation/test splits, each a seeded `take` of its size."""
    return {ours: take(splits[hub], sizes[ours], seed) for ours, hub in HUB_SPLITS}


def carve(rows: Rows, n_held_out: int, seed: int) -> tuple[Rows, Rows]:
    """Split ``rows`` into (rest, held-out) with a seeded permutation, for hub datasets without a split."""
    if n_held_out >= len(rows):
        raise DataFormatError(f"{rows.origin}: {len(rows)} rows cannot spare {n_held_out} for a held-out split")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return rows.select(sorted(order[n_held_out:])), rows.select(sorted(order[:n_held_out]))


def to_samples(
    rows: Rows, task: str, split: str, convert: Callable[[dict[str, Any], str, int], Sample | list[Sample] | None]
) -> list[Sample]:
    """Convert every row; ``convert(row, origin, index)`` returns a Sample, several, or None to skip the row.

    Missing or malformed fields raise `DataFormatError` naming the file (or hub split), row and field."""
    samples: list[Sample] = []
    for index, row in enumerate(rows):
        try:
            out = convert(row, rows.origin, index)
        except DataFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise DataFormatError(f"{rows.origin} row {index}: malformed row for task {task!r} ({err!r})") from err
        if out is None:
            continue
        samples += out if isinstance(out, list) else [out]
    if not samples:
        raise DataFormatError(f"{rows.origin}: no usable rows for task {task!r} split {split!r}")
    return [
        Sample(id=f"{task}-{split}-{i:05d}", prompt=s.prompt, references=s.references, meta=s.meta)
        for i, s in enumerate(samples)
    ]


def describe_source(task: str, source: str) -> str:
    log.info("task %r: data from %s", task, source)
    return "offline generator" if source == "offline" else source


def build_task(
    name: str,
    rows: dict[str, Rows],
    convert: Callable[[dict[str, Any], str, int], Sample | list[Sample] | None],
    reward: Reward,
    description: str,
    source: str,
    metrics: tuple[str, ...],
    max_new_tokens: int,
    truncation_side: str | None = None,
) -> Task:
    """The task from its rows per split (converted with `to_samples`); ``source`` is the loaded data's
    source, named after ``description``. ``truncation_side``: 'right' for prompts that start with their
    instruction (cut the end of the article, not the instruction), None for the model kind's default."""
    return Task(
        name=name,
        splits={split: to_samples(r, name, split, convert) for split, r in rows.items()},
        reward=reward,
        description=f"{description} Data: {describe_source(name, source)}.",
        metrics=metrics,
        generation={"max_new_tokens": max_new_tokens},
        truncation_side=truncation_side,
    )


# --- rewards built from the metric registry on first use --------------------------------------------


def metric_reward(metric: str, key: str | None = None, scale: float = 1.0, offset: float = 0.0, **options: Any):
    """``offset + scale · metric[key]`` per sample, from the registry (``lmgym metrics`` lists the names).

    ``scale``/``offset`` turn an error rate into a reward (1 − TER: ``scale=-1, offset=1``)."""

    def build() -> Reward:
        from lmgym.rewards.catalog import load_metric
        from lmgym.rewards.metric import MetricReward

        inner = MetricReward(load_metric(metric, **options), key)
        return inner if (scale, offset) == (1.0, 0.0) else Affine(inner, scale, offset)

    return LazyReward(key or metric, build)


def choose(kind: str, value: str, options: dict[str, Callable[[], Reward]]) -> Reward:
    """The reward named ``value`` among a task's ``options``, with a clear error otherwise."""
    if value not in options:
        raise InputError(f"task_args.{kind} must be one of {', '.join(options)}, got {value!r}")
    return options[value]()
