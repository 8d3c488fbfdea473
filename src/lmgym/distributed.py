"""Several processes (and devices) for one run: data parallelism, mixed precision, main-process-only I/O.

Launch any trainer with ``torchrun --nproc_per_node N`` or ``accelerate launch`` (multi-GPU or multi-node
configs in ``configs/accelerate/``): accelerate's `PartialState` reads the launcher's environment, joins the
process group (NCCL on GPUs, gloo on CPUs) and picks this process's device.

The default scheme is plain data parallelism with replicated weights:

- every rank holds the whole policy and optimizer; the same seed gives the same initial weights;
- the global batch (``rollout.batch_size`` completions) is split by prompt, each rank generates and scores
  its slice, and statistics that steer training (advantage whitening, the KL controller, baselines, early
  stopping) are computed from sums over all ranks, so every rank takes the same decisions;
- after each backward pass the gradients are averaged over ranks (one all-reduce of a flat buffer), so the
  optimizer steps keep the replicas identical;
- metrics, samples, checkpoints and the final model are written by the main process only.

Gradients are averaged after backward rather than through DDP's forward hooks, so every loss term works
(PPO-ptx batches, NLPO's masked scores, separate critics) whatever forward pass produced it.

With ``accelerate.sharding`` (or an accelerate FSDP config) the policy and the reference are instead sharded
over the ranks with FSDP (torch's ``fully_shard``, one unit per transformer block and one for the rest): each
rank stores a slice of every weight, gradient and optimizer state, and gathers a block's weights only while it
runs. FSDP averages those gradients itself (a reduce-scatter), so `average_gradients` then handles only the
replicated rest (the value head). Everything else stays as above; generation keeps the ranks in step (a rank
that has finished its batch still joins the forward passes of the others), every rank takes part in evaluation
(FSDP's gathers are collective) and checkpoints hold full, unsharded tensors, so a sharded run resumes with any
number of processes, sharded or not.

With one process every helper here returns at once: no collective runs and nothing is copied.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from lmgym.errors import LmgymError

T = TypeVar("T")

_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
SHARDINGS = ("none", "full", "grad_op")
# accelerate's FSDP1 sharding strategies, as lmgym's FSDP2 settings.
_FSDP1_STRATEGIES = {"FULL_SHARD": "full", "SHARD_GRAD_OP": "grad_op", "NO_SHARD": "none"}


class DistributedError(LmgymError, RuntimeError):
    """A setting that cannot work with the processes or devices at hand; the message says what to change."""


def _leave_process_group() -> None:
    """Destroy the process group before the interpreter tears down: left to the interpreter's shutdown, gloo's
    worker threads can be destroyed while still joinable, and the process aborts ("terminate called without
    an active exception") after a run that finished. Several trainers may run in one process, so this runs
    at exit rather than at the end of a run; registering it twice is harmless."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launched_world_size() -> int:
    """Processes the launcher started (torchrun / accelerate launch set WORLD_SIZE); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _launcher_precision() -> str:
    """`accelerate launch --mixed_precision X` (or a config file's) passes X in this variable."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def launcher_sharding() -> str:
    """The sharding an `accelerate launch` config asks for ('none' without one), read by accelerate's own
    FSDP plugin from the variables the launcher sets."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise DistributedError(
            "the launcher asks for DeepSpeed, which lmgym does not drive; its FSDP sharding gives the same memory "
            "savings: ZeRO-3 is accelerate.sharding=full, ZeRO-2 is accelerate.sharding=grad_op (or launch with "
            "configs/accelerate/fsdp.yaml)"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return "none"
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version == 2:
        return "full" if plugin.reshard_after_forward in (True, None) else "grad_op"
    strategy = getattr(plugin.sharding_strategy, "name", str(plugin.sharding_strategy))
    if strategy not in _FSDP1_STRATEGIES:
        raise DistributedError(
            f"the launcher's FSDP sharding strategy {strategy} is not supported; use FULL_SHARD or SHARD_GRAD_OP"
        )
    return _FSDP1_STRATEGIES[strategy]


def is_sharded_tensor(tensor: torch.Tensor) -> bool:
    """A parameter (or gradient) FSDP has split over the ranks (a DTensor)."""
    return isinstance(tensor, DTensor)


@dataclass
class Distributed:
    """This process's place in the run: rank, world size, device, precision, and the collectives it needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mixed_precision: str = "no"  # 'no' | 'bf16' | 'fp16'
    scaler: Any = None  # torch.amp.GradScaler with fp16
    sharding: str = "none"  # 'none' (replicated weights) | 'full' | 'grad_op' (FSDP)

    @classmethod
    def setup(cls, mixed_precision: str = "auto", device: str = "auto", sharding: str = "auto") -> Distributed:
        """Join the launcher's process group (if any) and choose device, precision and sharding.

        ``mixed_precision='auto'`` takes the launcher's setting (``accelerate launch --mixed_precision``),
        else none. ``device='auto'`` is this rank's GPU when there is one, else the CPU. ``sharding='auto'``
        takes the launcher's FSDP setting, else none; with one process nothing is sharded.
        """
        precision = _launcher_precision() if mixed_precision == "auto" else mixed_precision
        if precision not in ("no", *_PRECISIONS):
            raise DistributedError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {precision!r}")
        launched = launcher_sharding()  # also refuses a DeepSpeed launcher, whatever the config says
        sharding = launched if sharding == "auto" else sharding
        if sharding not in SHARDINGS:
            raise DistributedError(f"accelerate.sharding must be one of auto, {', '.join(SHARDINGS)}; got {sharding!r}")
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
            atexit.register(_leave_process_group)
            out = cls(
                rank=state.process_index,
                world_size=state.num_processes,
                local_rank=state.local_process_index,
                device=state.device,
                mixed_precision=precision,
            )
        out.sharding = sharding if out.world_size > 1 else "none"
        if out.sharded:
            # accelerate's launcher asks transformers to load the weights on the main process alone and leave
            # the others empty for a broadcast that only accelerate's own FSDP wrapping does; lmgym shards the
            # loaded model itself, so every process reads the checkpoint.
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
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

    @property
    def sharded(self) -> bool:
        """Weights are split over the ranks (FSDP): every forward pass is collective."""
        return self.sharding != "none"

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of a list the ranks agree on (its length must split evenly)."""
        if not self.enabled:
            return list(items)
        if len(items) % self.world_size:
            raise DistributedError(f"{len(items)} items do not split evenly over {self.world_size} processes")
        size = len(items) // self.world_size
        return list(items[self.rank * size : (self.rank + 1) * size])

    def local_minibatches(self, n_local: int, size: int, seed: int) -> list[torch.Tensor]:
        """Minibatches of the global batch (``n_local`` samples per process, in rank order), as indices into this
        process's samples: a permutation of the global batch drawn from ``seed`` (the same on every process),
        cut into pieces of ``size``. A process keeps the members of each piece it holds, which may be none;
        the loss weights (`loss_weights`) make the averaged gradient the piece's token mean whatever the split."""
        n_global = n_local * self.world_size
        perm = torch.randperm(n_global, generator=torch.Generator().manual_seed(seed))
        start = self.rank * n_local
        out = []
        for piece in perm.split(size):
            mine = piece[(piece >= start) & (piece < start + n_local)]
            out.append(mine - start)
        return out

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

    def token_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """The mean of ``values`` over the unmasked tokens of the global batch ([B, G] each on every rank)."""
        mask = mask.to(values.dtype)
        if not self.enabled:
            return float((values * mask).sum() / mask.sum().clamp(min=1))
        total, count = self.sum(torch.stack([(values * mask).sum(), mask.sum()]).double())
        return float(total / count.clamp(min=1))

    def loss_weights(self, counts: Sequence[float]) -> list[float]:
        """Weights of losses that are means over ``counts`` units each (tokens, examples), so that their weighted
        gradients, summed here and averaged over ranks, are the mean over every unit of the global batch:
        count · world size / global total. Exactly 1 for one loss in one process."""
        total = self.sum_float(float(sum(counts)))
        if total <= 0:
            return [1.0 / len(counts)] * len(counts)
        return [float(c) * self.world_size / total for c in counts]

    def set_threads(self, requested: int | None) -> None:
        """torch's CPU threads: ``requested``, else this machine's cores shared among its processes."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.enabled else 1
        torch.set_num_threads(requested or max(1, (os.cpu_count() or 1) // local))

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

    def gather_objects(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast_object(self, value: T) -> T:
        """The main process's ``value`` on every rank (any picklable object made by this process)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy the main process's trainable (replicated) parameters to every rank."""
        if not self.enabled:
            return
        for p in module.parameters():
            if p.requires_grad and not is_sharded_tensor(p):
                dist.broadcast(p.data, src=0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks: one all-reduce of a flat buffer.

        Every rank must pass the same parameters. One without a gradient on this rank counts as zero when
        another rank has one for it; one without a gradient anywhere keeps none (the optimizer skips it,
        as it would with one process).
        """
        if not self.enabled:
            return
        params = [p for p in params if not is_sharded_tensor(p)]  # FSDP reduce-scattered those already
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

    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
        """The global norm of the gradients, and, with ``max_norm``, gradients scaled down to it (torch's
        ``clip_grad_norm_``). Sharded gradients count each rank's slice once, replicated ones once in all."""
        params = [p for p in params if p.grad is not None]
        if not any(is_sharded_tensor(p.grad) for p in params):
            if max_norm is None:
                return torch.norm(torch.stack([p.grad.norm() for p in params]))
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        local = [p.grad.to_local() for p in params if is_sharded_tensor(p.grad)]
        replicated = [p.grad for p in params if not is_sharded_tensor(p.grad)]
        sharded_sq = self.sum(torch.stack([g.float().pow(2).sum() for g in local]).sum())
        replicated_sq = torch.stack([g.float().pow(2).sum() for g in replicated]).sum() if replicated else 0.0
        total = (sharded_sq + replicated_sq).sqrt()
        if max_norm is not None:
            coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(coef.to(p.grad.dtype))
        return total

    # --- FSDP sharding ------------------------------------------------------------------------------

    def shard_model(self, model: torch.nn.Module, blocks: Sequence[torch.nn.Module]) -> None:
        """Split ``model``'s weights over the ranks: one FSDP unit per transformer block, one for the rest
        (embeddings, final norm, LM head). Every rank must call it on the same model."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        reshard = self.sharding == "full"
        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)

    def full_state_dict(self, module: torch.nn.Module, every_rank: bool = False) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with sharded tensors gathered whole; collective: every rank must call it.
        By default on the main process only (empty on the others, on the CPU, tied weights once: for files);
        ``every_rank``: on every rank and device, with every name (to load into a module)."""
        if not self.sharded:
            return module.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=not every_rank)
        state = get_model_state_dict(module, options=options)
        if every_rank:
            return state
        return {name: state[name] for name in _untied_names(module) if name in state}

    def load_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load whole tensors (e.g. from a checkpoint) into ``module``, each rank keeping its slice."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def full_optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()`` of a sharded model with whole tensors, in torch's own layout (states keyed
        by parameter index), so that it loads into an unsharded run too. Collective; main process only."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        by_name = get_optimizer_state_dict(module, optimizer, options=options)
        if not self.is_main:
            return {}
        names = _parameter_names(module, optimizer)
        index = {name: i for i, name in enumerate(names)}
        groups = []
        for group in by_name["param_groups"]:
            groups.append({**group, "params": [index[n] for n in group["params"]]})
        return {"state": {index[n]: v for n, v in by_name["state"].items()}, "param_groups": groups}

    def load_full_optimizer_state(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Load `full_optimizer_state`'s layout (or an unsharded run's ``optimizer.state_dict()``)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _parameter_names(module, optimizer)
        by_name = {
            "state": {names[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(module, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

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


def _untied_names(module: torch.nn.Module) -> list[str]:
    """State-dict names with one name per tied weight (the first, alphabetically, as safetensors keeps)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]:
        groups.setdefault(id(tensor), []).append(name)
    return [sorted(names)[0] for names in groups.values()]


def _parameter_names(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order of torch's ``state_dict`` indices."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
