"""A task built to be learnable in seconds: say one chosen word as often as possible."""

from __future__ import annotations

import random

from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.errors import InputError
from lmgym.rewards.tokens import TokenMatch, TokenShare

HORIZON = 12
_WORDS = (
    "the",
    "a",
    "movie",
    "film",
    "story",
    "actor",
    "scene",
    "music",
    "night",
    "day",
    "people",
    "time",
    "life",
    "world",
    "man",
    "woman",
)


@register_task("toy", "Learnable toy task: reward = share of generated tokens equal to a target word.")
def toy_task(seed: int = 0, target: str = "the", per_token: bool = False, n_train: int = 256) -> Task:
    """``per_token=True`` pays 1/horizon at each matching token instead of the share at the end."""
    if n_train < 1:
        raise InputError("n_train must be >= 1")
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n_train + 64)]
    samples = [Sample(id=f"toy-{i:05d}", prompt=p) for i, p in enumerate(prompts)]
    return Task(
        name="toy",
        splits={"train": samples[:n_train], "val": samples[n_train : n_train + 32], "test": samples[n_train + 32 :]},
        reward=TokenMatch(target, value=1 / HORIZON) if per_token else TokenShare(target),
        description=f"say {target!r} as often as possible",
        metrics=("reward", "distinct"),
        generation={"max_new_tokens": HORIZON},
    )
