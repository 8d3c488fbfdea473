"""GRUE WMT16 English → German (hub ``wmt/wmt16``, config ``de-en``; offline: news-style sentences from
the translator in `translation.py`). Reward ``1 − TER`` or chrF."""

from __future__ import annotations

from typing import Any

from lmgym.data.hub import HubSpec
from lmgym.data.task import Task, register_task
from lmgym.data.tasks.translation import translation_task

HUB = HubSpec("wmt/wmt16", "de-en", ("train", "validation", "test"), ("translation",))


@register_task("wmt16", "GRUE WMT16 English→German translation (hub wmt/wmt16 de-en or offline).")
def wmt16_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    reward: str = "ter",
) -> Task:
    """GRUE WMT16 English→German translation (hub wmt/wmt16 de-en or offline)."""
    return translation_task("wmt16", HUB, "news", source, path, seed, n_train, n_val, n_test, reward)
