"""lmgym: fine-tune language models with reinforcement learning against any reward."""

from lmgym.api import evaluate_run, train
from lmgym.config import TrainConfig, load_config
from lmgym.data import Sample, Task, load_task, register_task
from lmgym.envs import TextGenEnv
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, ReferenceModel
from lmgym.rewards.base import Reward

__version__ = "0.1.0"

__all__ = [
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
