"""The task registry's one filler: imports every built-in task module (their `@register_task` decorators
run on import) and looks tasks up by name."""

from __future__ import annotations

import inspect
from typing import Any

# The GRUE tasks among them (imdb ... wmt16) each have a hub loader and an offline generator.
from lmgym.data.task import _DESCRIPTIONS, _REGISTRY, Task
from lmgym.data.tasks import (  # noqa: F401  (imported to register)
    arithmetic,
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
from lmgym.errors import InputError, LmgymError, NotFoundError, UserCodeError


def available_tasks() -> dict[str, str]:
    return dict(sorted(_DESCRIPTIONS.items()))


def load_task(name: str, **options: Any) -> Task:
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
