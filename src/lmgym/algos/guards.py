"""Numerical guards: stop a run cleanly when a reward, a loss or the KL goes bad.

A failure never leaves bad weights as the newest checkpoint. The trainer keeps in memory the
trainable state (parameters that require grad, optimizer state, extra modules, trainer state) as it
was at the start of the current and of the previous iteration (`Snapshot`). When something goes
wrong it restores the last state that was still good, saves it as a checkpoint, sets newer
checkpoints aside and raises `TrainingError` naming the iteration and the offending sample:

- a reward that is NaN/inf/not a number (raised while scoring iteration N's rollout): the weights
  are not at fault; the good state is the one at the start of iteration N;
- a loss or gradient that is NaN/inf during iteration N's update: the state at the start of N;
- a KL to the reference past ``guards.max_kl`` in iteration N's rollout: the weights that produced
  it came out of iteration N−1's update, so the good state is the one at the start of N−1.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Snapshot:
    """The trainable state at the end of ``iteration`` (0: before any update), held in memory."""

    iteration: int
    params: dict[str, torch.Tensor]  # the policy's trainable parameters, by name
    optimizer: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]]  # extra checkpoint modules (e.g. NLPO's mask policy)
    trainer_state: dict[str, Any]


def _clone_state(module: torch.nn.Module, previous: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    if (
        previous is not None
        and previous.keys() == state.keys()
        and all(torch.equal(previous[k], v) for k, v in state.items())
    ):
        return previous  # unchanged since the last snapshot (NLPO's mask between refreshes): share it
    return {k: v.detach().clone() for k, v in state.items()}


def take_snapshot(
    iteration: int,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    modules: dict[str, torch.nn.Module],
    trainer_state: dict[str, Any],
    previous: Snapshot | None = None,
) -> Snapshot:
    params = {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}
    extra = {
        name: _clone_state(module, previous.modules.get(name) if previous else None) for name, module in modules.items()
    }
    # JSON round trip: the trainer state is JSON by contract, and this makes it a deep copy.
    state = json.loads(json.dumps(trainer_state))
    return Snapshot(iteration, params, copy.deepcopy(optimizer.state_dict()), extra, state)


@torch.no_grad()
def restore_snapshot(
    snapshot: Snapshot, policy: torch.nn.Module, optimizer: torch.optim.Optimizer, modules: dict[str, torch.nn.Module]
) -> None:
    named = dict(policy.named_parameters())
    for name, value in snapshot.params.items():
        named[name].copy_(value)
    optimizer.load_state_dict(snapshot.optimizer)
    for name, module in modules.items():
        module.load_state_dict(snapshot.modules[name])


def non_finite_rows(*tensors: torch.Tensor | None) -> list[int]:
    """Rows (dim 0) where any of the tensors holds a NaN or an infinity."""
    bad: set[int] = set()
    for tensor in tensors:
        if tensor is not None and tensor.is_floating_point():
            rows = (~torch.isfinite(tensor.detach())).reshape(tensor.shape[0], -1).any(-1)
            bad.update(torch.nonzero(rows).flatten().tolist())
    return sorted(bad)
