"""Imports every metric module of this package (their @register_metric decorators run on import).
`lmgym.rewards.catalog` imports this, and the rewards that are metrics too."""

from lmgym.metrics import (  # noqa: F401
    diversity,
    fluency,
    math_answer,
    model_based,
    ngram,
    summac,
    task_specific,
)
