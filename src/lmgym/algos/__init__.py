"""Training algorithms, chosen by the config's ``algo`` key."""

from __future__ import annotations

import importlib

from lmgym.algos.trainer import Trainer, TrainResult
from lmgym.errors import NotFoundError

# algo name → "module:class"; imported on first use.
TRAINERS: dict[str, str] = {
    "ppo": "lmgym.algos.ppo:PPOTrainer",
    "nlpo": "lmgym.algos.nlpo:NLPOTrainer",
    "a2c": "lmgym.algos.a2c:A2CTrainer",
    "trpo": "lmgym.algos.trpo:TRPOTrainer",
    "reinforce": "lmgym.algos.reinforce:ReinforceTrainer",
    "rloo": "lmgym.algos.rloo:RLOOTrainer",
    "grpo": "lmgym.algos.grpo:GRPOTrainer",
    "sft": "lmgym.algos.sft:SFTTrainer",
    "dpo": "lmgym.algos.dpo:DPOTrainer",
    "ilql": "lmgym.algos.ilql:ILQLTrainer",
}


def get_trainer(algo: str) -> type[Trainer]:
    if algo not in TRAINERS:
        raise NotFoundError(f"unknown algo {algo!r}; available: {', '.join(TRAINERS)}")
    module, name = TRAINERS[algo].split(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["TRAINERS", "TrainResult", "Trainer", "get_trainer"]
