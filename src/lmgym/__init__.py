"""lmgym: fine-tune language models with reinforcement learning against any reward.

The public names below are imported on first use, so that ``import lmgym`` (and every command line
start) does not load torch and transformers before it needs them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import gymnasium

__version__ = "0.1.0"

# `gymnasium.make("lmgym/TextGen-v0", ...)` works after `import lmgym`; the environment's module (and torch)
# loads only when one is made.
if "lmgym/TextGen-v0" not in gymnasium.registry:
    gymnasium.register(id="lmgym/TextGen-v0", entry_point="lmgym.envs.textgen:make_textgen_env")

# public name → the module that defines it
_EXPORTS = {
    "train": "lmgym.api",
    "evaluate_run": "lmgym.api",
    "TrainConfig": "lmgym.config",
    "load_config": "lmgym.config",
    "Sample": "lmgym.data.sample",
    "Task": "lmgym.data.task",
    "register_task": "lmgym.data.task",
    "load_task": "lmgym.data.registry",
    "TextGenEnv": "lmgym.envs.textgen",
    "load_model": "lmgym.models.loading",
    "Policy": "lmgym.models.policy",
    "ReferenceModel": "lmgym.models.policy",
    "Reward": "lmgym.rewards.base",
    "Callback": "lmgym.algos.trainer",
}

__all__ = [
    "Callback",
    "Policy",
    "ReferenceModel",
    "Reward",
    "Sample",
    "Task",
    "TextGenEnv",
    "TrainConfig",
    "evaluate_run",
    "load_config",
    "load_model",
    "load_task",
    "register_task",
    "train",
]

if TYPE_CHECKING:
    from lmgym.algos.trainer import Callback
    from lmgym.api import evaluate_run, train
    from lmgym.config import TrainConfig, load_config
    from lmgym.data.registry import load_task
    from lmgym.data.sample import Sample
    from lmgym.data.task import Task, register_task
    from lmgym.envs.textgen import TextGenEnv
    from lmgym.models.loading import load_model
    from lmgym.models.policy import Policy, ReferenceModel
    from lmgym.rewards.base import Reward


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmgym' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
