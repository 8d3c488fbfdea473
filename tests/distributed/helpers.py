"""Shared pieces of the scale tests: a quick tiny-model config and a reward of token ids."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import torch
from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.algos.onpolicy import OnPolicyTrainer
from lmgym.config import load_config

# Greedy decoding and a fixed completion length: runs that split the same batch differently must agree.
FIXED = [
    "task=toy",
    "model=tiny",
    "threads=1",
    "rollout.batch_size=8",
    "ppo.minibatch_size=8",
    "ppo.epochs=2",
    "ppo.lr=3e-3",
    "generation.do_sample=false",
    "generation.max_new_tokens=6",
    "generation.min_new_tokens=6",
    "eval.num_prompts=4",
    "eval.batch_size=4",
]


def token_reward(prompts, generations, references, meta) -> list[float]:
    """Mean of (token id mod 7) / 7 over the generated tokens: the tiny model writes no words."""
    return [sum(t % 7 for t in m["gen_token_ids"]) / (7 * max(len(m["gen_token_ids"]), 1)) for m in meta]


def make_trainer(tmp_path: Path, name: str, *extra: str, resume: bool = False) -> OnPolicyTrainer:
    config = load_config(None, [*FIXED, f"run_dir={tmp_path}", f"name={name}", *extra])
    console = Console(file=io.StringIO())
    return get_trainer(config.algo)(config, console=console, reward=token_reward, resume=resume)


def trainable(trainer: OnPolicyTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}


def storage_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (shared ones count once)."""
    seen: dict[int, int] = {}
    for tensor in itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
