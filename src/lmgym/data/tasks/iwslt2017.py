"""GRUE IWSLT 2017 English → German (hub ``IWSLT/iwslt2017``, config ``iwslt2017-en-de``; offline:
talk-style sentences with I/we/you subjects from the translator in `translation.py`). Reward ``1 − TER``
or chrF."""

from __future__ import annotations

from typing import Any

from lmgym.data.hub import HubSpec
from lmgym.data.task import Task, register_task
from lmgym.data.tasks.translation import translation_task

HUB = HubSpec("IWSLT/iwslt2017", "iwslt2017-en-de", ("train", "validation", "test"), ("translation",))


@register_task("iwslt2017", "GRUE IWSLT 2017 English→German translation (hub IWSLT/iwslt2017 or offline).")
def iwslt2017_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    reward: str = "ter",
) -> Task:
    """GRUE IWSLT 2017 English→German translation (hub IWSLT/iwslt2017 or offline)."""
    return translation_task("iwslt2017", HUB, "talk", source, path, seed, n_train, n_val, n_test, reward)
