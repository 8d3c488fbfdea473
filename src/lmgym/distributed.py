"""Several processes (and devices) for one run: data parallelism, mixed precision, main-process-only I/O.

Launch any trainer with ``torchrun --nproc_per_node N`` or ``accelerate launch`` (multi-GPU or multi-node
configs in ``configs/accelerate/``): accelerate's `PartialState` reads the launcher's environment, joins the
process group (NCCL on GPUs, gloo on CPUs) and picks this process's device.

The scheme is plain data parallelism with replicated weights:

- every rank holds the whole policy and optimizer; the same seed gives the same initial weights;
- the global batch (``rollout.batch_size`` completions) is split by prompt, each rank generates and scores
  its slice, and statistics that steer training (advantage whitening, the KL controller, baselines, early
  stopping) are computed from sums over all ranks, so every rank takes the same decisions;
- after each backward pass the gradients are averaged over ranks (one all-reduce of a flat buffer), so the
  optimizer steps keep the replicas identical;
- metrics, samples, checkpoints and the final model are written by the main process only.

Gradients are averaged after backward rather than through DDP's forward hooks, so every loss term works
(PPO-ptx batches, NLPO's masked scores, separate critics) whatever forward pass produced it.

With one process every helper here returns at once: no collective runs and nothing is copied.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What `accelerate launch` sets when its config asks for sharded weights.
_SHARDING_LAUNCHERS = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}


class DistributedError(RuntimeError):
    """A setting that cannot work with the processes or devices at hand; the message says what to change."""


def launched_world_size() -> int:
    """Processes the launcher started (torchrun / accelerate launch set WORLD_SIZE); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _launcher_precision() -> str:
    """`accelerate launch --mixed_precision X` (or a config file's) passes X in this variable."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


@dataclass
class Distributed:
    """This process's place in the run: rank, world size, device, precision, and the collectives it needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mixed_precision: str = "no"  # 'no' | 'bf16' | 'fp16'
    scaler: Any = None  # torch.amp.GradScaler with fp16

    @classmethod
    def setup(cls, mixed_precision: str = "auto", device: str = "auto") -> Distributed:
        """Join the launcher's process group (if any) and choose device and precision.

        ``mixed_precision='auto'`` takes the launcher's setting (``accelerate launch --mixed_precision``),
        else none. ``device='auto'`` is this rank's GPU when there is one, else the CPU.
        """
        precision = _launcher_precision() if mixed_precision == "auto" else mixed_precision
        if precision not in ("no", *_PRECISIONS):
            raise DistributedError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {precision!r}")
        sharded = [name for name, var in _SHARDING_LAUNCHERS.items() if os.environ.get(var, "").lower() == "true"]
        if sharded:
            raise DistributedError(
                f"the launcher asks for {sharded[0]}: lmgym trains with replicated weights (data parallel) only; "
                "use a multi-GPU accelerate config without FSDP/DeepSpeed (configs/accelerate/multi_gpu.yaml), and "
                "LoRA (the peft section) for models too large to replicate"
            )
        world = launched_world_size()
        cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise DistributedError("accelerate.device=cuda, but torch sees no GPU; use device=auto or cpu")
        if world == 1 and not cuda:
            # The single-process CPU path: no process group, no accelerate state, nothing changes.
            out = cls(mixed_precision=precision)
        else:
            from accelerate import PartialState

            state = PartialState(cpu=not cuda)
            out = cls(
                rank=state.process_index,
                world_size=state.num_processes,
                local_rank=state.local_process_index,
                device=state.device,
                mixed_precision=precision,
            )
        if precision == "fp16":
            if out.device.type != "cuda":
                raise DistributedError("mixed_precision=fp16 needs a GPU; on a CPU use bf16 or no")
            out.scaler = torch.amp.GradScaler("cuda")
        return out

    # --- who does what ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of a list the ranks agree on (its length must split evenly)."""
        if not self.enabled:
            return list(items)
        if len(items) % self.world_size:
            raise DistributedError(f"{len(items)} items do not split evenly over {self.world_size} processes")
        size = len(items) // self.world_size
        return list(items[self.rank * size : (self.rank + 1) * size])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # --- collectives (no-ops with one process) ---------------------------------------------------

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor`` (a new tensor; the input is left as it is)."""
        if not self.enabled:
            return tensor
        out = tensor.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def mean_float(self, value: float) -> float:
        if not self.enabled:
            return value
        return float(self.sum(torch.tensor(float(value), dtype=torch.float64))) / self.world_size

    def sum_float(self, value: float) -> float:
        if not self.enabled:
            return value
        return float(self.sum(torch.tensor(float(value), dtype=torch.float64)))

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats over ranks (the same keys on every rank), in one all-reduce."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        summed = self.sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
        return {k: float(v) / self.world_size for k, v in zip(keys, summed.tolist(), strict=True)}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on at least one (so that all ranks stop together)."""
        if not self.enabled:
            return flag
        return bool(self.sum(torch.tensor(float(flag), dtype=torch.float64)) > 0)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's ``tensor`` (same shape on every rank) along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        local = tensor.detach().contiguous().to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    @torch.no_grad()
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy the main process's trainable parameters to every rank."""
        if not self.enabled:
            return
        for p in module.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks: one all-reduce of a flat buffer.

        Every rank must pass the same parameters. One without a gradient on this rank counts as zero when
        another rank has one for it; one without a gradient anywhere keeps none (the optimizer skips it,
        as it would with one process).
        """
        if not self.enabled:
            return
        params = list(params)
        present = self.sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32))
        params = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    # --- precision -------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16/fp16 autocast on this device for forward passes; nothing with mixed_precision='no'."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_PRECISIONS[self.mixed_precision])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16-scaled gradients back to their true size (before clipping or reading them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); with fp16 the scaler skips a step whose gradients overflowed and lowers its scale."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


@contextlib.contextmanager
def main_process_first(state: Distributed) -> Iterator[None]:
    """The main process runs the block first (e.g. to write a folder), the others once it is done."""
    if not state.is_main:
        state.barrier()
    try:
        yield
    finally:
        if state.is_main:
            state.barrier()
