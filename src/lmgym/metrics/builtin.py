"""Imports every module that registers built-in metrics (their @register_metric decorators run on import)."""

from lmgym.metrics import (  # noqa: F401
    diversity,
    fluency,
    learned,
    model_based,
    ngram,
    summac,
    task_specific,
)
from lmgym.rewards import r3  # noqa: F401
