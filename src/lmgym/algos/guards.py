"""Numerical guards: stop a run cleanly when a reward, a loss or the KL goes bad.

A failure never leaves bad weights as the newest checkpoint. When something goes wrong the trainer
restores the last state that was still good, saves it as a checkpoint, sets newer checkpoints aside and
raises `TrainingError` naming the iteration and the offending sample:

- a reward that is NaN/inf/not a number (raised while scoring iteration N's rollout): the weights
  are not at fault; the good state is the one at the start of iteration N;
- a loss or gradient that is NaN/inf during iteration N's update: the state at the start of N;
- a KL to the reference past ``guards.max_kl`` in iteration N's rollout: the weights that produced
  it came out of iteration N−1's update, so the good state is the one at the start of N−1.

What is kept (`Rollback`): the trainer state (JSON: KL controller, reward statistics, loss scale) at the
start of the current and of the previous iteration, and at most one copy of the trainable tensors
(parameters that require grad, optimizer state, extra checkpoint modules), in host memory: pinned and
copied asynchronously from an accelerator, so it costs no device memory. The copy is taken lazily, just
before the first change of an iteration (its first optimizer step; TRPO's line search; NLPO's mask
refresh), so the update's first backward pass runs without it, and the buffers are reused from one
iteration to the next. Until an iteration changes anything, the live tensors are its starting state, so:

- a failure before iteration N's first change restores nothing: the live tensors are the good state;
- a failure after it restores the copy, which holds the start of N;
- the KL guard runs in N's rollout, before N's update: the copy still holds the start of N−1 (taken at
  N−1's first change), or, if N−1 changed nothing, the live tensors are that state.

So one copy covers all three cases. With ``guards.rollback`` off no copy is kept: a failure after the
first change of its iteration (a NaN loss after an optimizer step, a KL that needs the state before the
previous update) then saves nothing and names the newest checkpoint instead.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Snapshot:
    """The trainable state at the end of ``iteration`` (0: before any update). ``tensors`` None: the live
    tensors still hold it (nothing changed them since)."""

    iteration: int
    trainer_state: dict[str, Any]
    tensors: KeptTensors | None = None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (FSDP's DTensor), the tensor itself otherwise."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


@dataclass
class KeptTensors:
    """Host copies of the trainable tensors, in buffers reused from one copy to the next."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)  # the policy's trainable parameters, by name
    optimizer: list[dict[str, Any]] = field(default_factory=list)  # per parameter, in param_groups order
    groups: list[dict[str, Any]] = field(default_factory=list)  # the param_groups' settings (lr, betas, ...)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra checkpoint modules
    event: Any = None  # a CUDA event recorded after asynchronous copies; waited on before the copy is read

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def _host_buffer(like: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
    """A host tensor shaped as ``like``: ``old`` when it fits, else a new one (pinned when ``like`` is on a GPU,
    so the copy into it can be asynchronous)."""
    if old is not None and old.shape == like.shape and old.dtype == like.dtype:
        return old
    return torch.empty(like.shape, dtype=like.dtype, pin_memory=like.device.type == "cuda")


def _copy_into(buffers: dict[str, Any], values: Iterator[tuple[str, Any]]) -> dict[str, Any]:
    """Each tensor of ``values`` copied into its buffer of ``buffers`` (other values: deep copies)."""
    out: dict[str, Any] = {}
    for name, value in values:
        if not isinstance(value, torch.Tensor):
            out[name] = copy.deepcopy(value)
            continue
        local = _local(value.detach())
        old = buffers.get(name)
        out[name] = _host_buffer(local, old if isinstance(old, torch.Tensor) else None)
        out[name].copy_(local, non_blocking=local.device.type == "cuda")
    return out


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def keep_tensors(
    kept: KeptTensors | None,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    modules: dict[str, torch.nn.Module],
) -> KeptTensors:
    """Copy the live trainable tensors into ``kept``'s buffers (new ones where the shapes changed)."""
    kept = kept or KeptTensors()
    kept.params = _copy_into(kept.params, ((n, p) for n, p in policy.named_parameters() if p.requires_grad))
    old = kept.optimizer
    kept.optimizer = [
        _copy_into(old[i] if i < len(old) else {}, ((k, v) for k, v in optimizer.state.get(p, {}).items()))
        for i, p in enumerate(optimizer_params(optimizer))
    ]
    kept.groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    kept.modules = {
        name: _copy_into(kept.modules.get(name, {}), iter(module.state_dict().items()))
        for name, module in modules.items()
    }
    kept.event = None
    if any(_local(p).is_cuda for p in policy.parameters()):
        kept.event = torch.cuda.Event()
        kept.event.record()
    return kept


@torch.no_grad()
def restore_tensors(
    kept: KeptTensors, policy: torch.nn.Module, optimizer: torch.optim.Optimizer, modules: dict[str, torch.nn.Module]
) -> None:
    """Copy ``kept`` back into the live tensors, in place (sharded tensors: each process its own part)."""
    kept.wait()
    named = dict(policy.named_parameters())
    for name, value in kept.params.items():
        _local(named[name]).copy_(value)
    for p, state in zip(optimizer_params(optimizer), kept.optimizer, strict=True):
        if not state:  # no optimizer state yet when the copy was taken (before the first step)
            optimizer.state.pop(p, None)
            continue
        live = optimizer.state[p]
        for key, value in state.items():
            if isinstance(live.get(key), torch.Tensor):
                _local(live[key]).copy_(value)
            else:
                live[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    for group, settings in zip(optimizer.param_groups, kept.groups, strict=True):
        group.update(settings)
    for name, module in modules.items():
        module.load_state_dict(kept.modules[name])


class Rollback:
    """The good states a guard may restore: see the module's docstring. ``copies`` off: none of the trainable
    tensors is ever copied (only the live ones serve, while they are still the good state)."""

    def __init__(self, copies: bool) -> None:
        self.copies = copies
        self.iteration = 0  # the one running
        self._states: dict[int, dict[str, Any]] = {}  # trainer state at the end of iteration i (JSON copies)
        self._kept: KeptTensors | None = None
        self._kept_end = -1  # the copy holds the tensors at the end of this iteration
        self._last_change = 0  # the last iteration that changed the live tensors (0: none in this process)

    def begin(self, iteration: int, trainer_state: dict[str, Any]) -> None:
        """Iteration ``iteration`` starts; ``trainer_state`` is the trainer's at the end of the one before."""
        self.iteration = iteration
        # JSON round trip: the trainer state is JSON by contract, and this makes it a deep copy.
        self._states = {i: s for i, s in self._states.items() if i == iteration - 2}
        self._states[iteration - 1] = json.loads(json.dumps(trainer_state))

    def changing(
        self, policy: torch.nn.Module, optimizer: torch.optim.Optimizer, modules: dict[str, torch.nn.Module]
    ) -> None:
        """Call before anything changes the trainable tensors; the iteration's first call keeps a copy."""
        if self._last_change == self.iteration:
            return
        if self.copies:
            self._kept = keep_tensors(self._kept, policy, optimizer, modules)
            self._kept_end = self.iteration - 1
        self._last_change = self.iteration

    def state_at_end_of(self, iteration: int) -> Snapshot | None:
        """The state at the end of ``iteration`` (this iteration − 1 or − 2), if it can still be had."""
        if iteration not in self._states:  # before this process's first iteration, or too long ago
            return None
        if self._last_change <= iteration:  # nothing has changed the live tensors since
            return Snapshot(iteration, self._states[iteration])
        if self._kept is not None and self._kept_end == iteration:
            return Snapshot(iteration, self._states[iteration], self._kept)
        return None

    def current(self) -> Snapshot | None:
        """The state at the start of the running iteration."""
        return self.state_at_end_of(self.iteration - 1)

    def before_previous_update(self) -> Snapshot | None:
        """The state at the start of the iteration before the running one (before its update)."""
        return self.state_at_end_of(self.iteration - 2)


def non_finite_rows(*tensors: torch.Tensor | None) -> list[int]:
    """Rows (dim 0) where any of the tensors holds a NaN or an infinity."""
    bad: set[int] = set()
    for tensor in tensors:
        if tensor is not None and tensor.is_floating_point():
            rows = (~torch.isfinite(tensor.detach())).reshape(tensor.shape[0], -1).any(-1)
            bad.update(torch.nonzero(rows).flatten().tolist())
    return sorted(bad)
