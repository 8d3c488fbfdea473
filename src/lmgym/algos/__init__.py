"""Training algorithms."""

from lmgym.algos.onpolicy import OnPolicyTrainer, TrainResult
from lmgym.algos.ppo import PPOTrainer

TRAINERS = {"ppo": PPOTrainer}

__all__ = ["TRAINERS", "OnPolicyTrainer", "PPOTrainer", "TrainResult"]
