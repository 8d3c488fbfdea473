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
(parameters that require grad, optimizer state, extra checkpoint modules), in host memory: from an
accelerator one flat pinned buffer, copied asynchronously, so it costs no device memory; on a CPU one block
per tensor, which the C heap fits into the space the update's activations have just freed. The copy is
taken lazily, just before the first change of an iteration (its first optimizer step; TRPO's line search;
NLPO's mask refresh), so the update's first backward pass runs without it. It is needed until the next
iteration's KL guard has passed; on a CPU it is then freed (`release_previous`), so the copy and the
update's activations are never held at once when the update takes one optimizer step; a pinned buffer
(a GPU run) is kept and reused. Until an iteration changes anything, the live tensors are its start, so:

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
from dataclasses import dataclass, field
from typing import Any

import torch

from lmgym.host_memory import release_free_heap


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
    """Host copies of the trainable tensors. From a GPU: views into one flat pinned buffer (one allocation, reused
    by every copy, for asynchronous copies). On a CPU: one tensor per source. A single block as large as the
    whole state (1.6 GB for SmolLM2-135M with AdamW) rarely finds a free hole of that size in the heap that the
    update's activations have just left (`lmgym.host_memory` keeps freed memory), so it grows the heap and faults
    fresh pages in; tensor-sized blocks fit the holes. Measured on that model's full fine-tune (GRPO, 2
    threads, 8 steps): the copy took 0.13-0.18 s in every step against 0.2-1.8 s (up to 270 k page faults),
    and the steps' peak RSS was 4.8 GB against 5.7 GB; a later run saw 0.52 s (55 k faults) in one step of 6,
    so the blocks usually, not always, find holes."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)  # the policy's trainable parameters, by name
    optimizer: list[dict[str, Any]] = field(default_factory=list)  # per parameter, in param_groups order
    groups: list[dict[str, Any]] = field(default_factory=list)  # the param_groups' settings (lr, betas, ...)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra checkpoint modules
    copies: list[torch.Tensor] = field(default_factory=list)  # every copy, in copy order
    buffer: torch.Tensor | None = None  # from a GPU: the pinned bytes all the copies are views of
    layout: list[tuple[torch.Size, torch.dtype]] = field(default_factory=list)  # of the copies, in copy order
    event: Any = None  # a CUDA event recorded after asynchronous copies; waited on before the copy is read

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()

    @property
    def pinned(self) -> bool:
        return self.buffer is not None

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() if self.buffer is not None else sum(t.nbytes for t in self.copies)


_ALIGN = 64  # bytes: every view starts at a multiple (cache lines; any dtype's alignment)


def _views(buffer: torch.Tensor, layout: list[tuple[torch.Size, torch.dtype]]) -> list[torch.Tensor]:
    views, offset = [], 0
    for shape, dtype in layout:
        size = shape.numel() * dtype.itemsize
        views.append(buffer[offset : offset + size].view(dtype).view(shape))
        offset += -(-size // _ALIGN) * _ALIGN
    return views


def _pinned_buffer(layout: list[tuple[torch.Size, torch.dtype]]) -> torch.Tensor:
    total = sum(-(-shape.numel() * dtype.itemsize // _ALIGN) * _ALIGN for shape, dtype in layout)
    return torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=True)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def keep_tensors(
    kept: KeptTensors | None,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    modules: dict[str, torch.nn.Module],
) -> KeptTensors:
    """Copy the live trainable tensors into ``kept``'s buffer (a new one when their shapes changed)."""
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    states = [dict(optimizer.state.get(p, {})) for p in optimizer_params(optimizer)]
    module_states = {name: module.state_dict() for name, module in modules.items()}
    # Every tensor to copy, in one order: parameters, optimizer state, modules (others are deep-copied).
    sources = [
        _local(t.detach())
        for t in [
            *params.values(),
            *(v for state in states for v in state.values()),
            *(v for state in module_states.values() for v in state.values()),
        ]
        if isinstance(t, torch.Tensor)
    ]
    layout = [(t.shape, t.dtype) for t in sources]
    on_gpu = any(t.is_cuda for t in sources)
    kept = kept if kept is not None and kept.layout == layout else KeptTensors(layout=layout)
    if not kept.copies and on_gpu:
        kept.buffer = _pinned_buffer(layout)
        kept.copies = _views(kept.buffer, layout)
    elif not kept.copies:
        kept.copies = [torch.empty(shape, dtype=dtype) for shape, dtype in layout]
    for target, source in zip(kept.copies, sources, strict=True):
        target.copy_(source, non_blocking=source.is_cuda)
    views = iter(kept.copies)

    def mirror(values: dict[str, Any]) -> dict[str, Any]:
        return {k: next(views) if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in values.items()}

    kept.params = mirror(params)
    kept.optimizer = [mirror(state) for state in states]
    kept.groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    kept.modules = {name: mirror(state) for name, state in module_states.items()}
    kept.event = None
    if on_gpu:
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

    def __init__(self, copies: bool, trim_heap: bool = True) -> None:
        self.copies = copies
        # Trim the C heap before a copy in pageable memory, so that it reuses the update's freed pages (off when the
        # heap keeps its freed memory for reuse anyway: lmgym.host_memory)
        self.trim_heap = trim_heap
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
            if self.trim_heap and (self._kept is None or not self._kept.pinned):
                release_free_heap()
            self._kept = keep_tensors(self._kept, policy, optimizer, modules)
            self._kept_end = self.iteration - 1
        self._last_change = self.iteration

    def release_previous(self) -> None:
        """The running iteration's KL guard has passed: the start of the iteration before it is not needed any more.
        A copy of it in pageable memory (a CPU run, where host memory is the training memory) is freed, so that
        the update's activations can use that memory; a pinned one (a GPU run) is kept for the next copy."""
        if self._kept is not None and self._kept_end < self.iteration - 1 and not self._kept.pinned:
            self._kept = None

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
