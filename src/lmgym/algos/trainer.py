"""`Trainer`: what every training algorithm shares, around its step.

Setup (in this order, so that a bad input costs seconds, not a model load): processes and devices, the
run folder (new, found by ``--resume``, or refused), the task and its reward, the prompts against the
token budget (tokenizer only), then the model: the policy (with a value head when the algorithm has a
critic), the frozen reference, LoRA or frozen blocks, FSDP sharding, the optimizer, and a resumed
checkpoint. Then the loop: evaluate the initial policy, `step` each iteration, log, evaluate, checkpoint,
stop on a time budget or a callback, evaluate the final policy, write ``final/``.

Subclasses: `lmgym.algos.onpolicy.OnPolicyTrainer` (rollout → rewards → advantages → minibatch update) and
`lmgym.algos.offline.OfflineTrainer` (one gradient step on a batch of fixed data). A subclass provides
`step` and what it adds to the models (`build_extras`), the checkpoint (`checkpoint_modules`,
`trainer_state`) and the progress line (`status`).

Numerical guards (algos/guards.py): at most one host copy of the trainable state is kept (taken at each
iteration's first optimizer step), so a NaN reward or loss, or a runaway KL, restores the last good state,
saves it as the newest checkpoint and stops with an error naming the iteration and the sample.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from safetensors.torch import save_file

from lmgym import host_memory
from lmgym.algos.guards import Rollback, Snapshot, restore_tensors
from lmgym.algos.model_card import model_card, write_model_card
from lmgym.checkpoint import (
    clean_partial,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    reject_after,
    save_checkpoint,
)
from lmgym.config import ConfigError, TrainConfig
from lmgym.data.registry import load_task
from lmgym.data.sample import Sample
from lmgym.data.task import Task
from lmgym.distributed import Distributed, DistributedError
from lmgym.errors import LmgymError, MissingFileError, RunExistsError, TrainingError, UserCodeError
from lmgym.models.loading import LoadedModel, load_model, load_tokenizer
from lmgym.models.lora import add_lora, save_adapter
from lmgym.models.policy import Policy, ReferenceModel, freeze, gradient_checkpointing, transformer_blocks
from lmgym.preflight import check_context, check_prompt_lengths
from lmgym.rewards.base import Reward, as_reward, load_reward_state, reward_state, walk
from lmgym.rewards.factory import build_reward
from lmgym.rollout.evaluation import evaluate
from lmgym.rollout.metric_set import MetricSet
from lmgym.rollout.rollout import check_generation_backend
from lmgym.rollout.sampling import configure_tokenizer, generation_config
from lmgym.trackers import Trackers, check_installed
from lmgym.tracking import RunDir, run_folder


@dataclass
class TrainResult:
    run_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


class Callback(Protocol):
    """Python API hooks (`lmgym.train(..., callbacks=[...])`); each method is optional. ``on_iteration_end``
    may return True (or call ``trainer.request_stop(reason)``) to end training after this iteration: the run
    then finishes as usual, with its final evaluation and ``final/``."""

    def on_iteration_end(self, iteration: int, metrics: dict[str, Any], trainer: Trainer) -> bool | None: ...
    def on_evaluate(self, iteration: int, metrics: dict[str, float]) -> None: ...
    def on_save(self, path: Path) -> None: ...


def prompt_indices(n_samples: int, batch_size: int, iteration: int, seed: int) -> list[int]:
    """Indices of iteration ``iteration``'s prompts (1-based): consecutive slices of
    seeded per-epoch permutations. Stateless, so a resumed run draws the same prompts."""
    out: list[int] = []
    start = (iteration - 1) * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_samples)
        perm = list(range(n_samples))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        out += perm[offset : offset + batch_size - len(out)]
    return out


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; ``fused``: torch's fused kernel (one pass over each parameter's tensors instead of one per arithmetic
    operation, ~3.5x faster on a CPU), where it applies: plain float tensors on a CPU or a GPU, not FSDP's shards."""
    params = [p for group in groups for p in group["params"]]
    fused = fused and all(
        type(p) is torch.nn.Parameter and p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


class Trainer:
    uses_critic = False  # builds a value head (on-policy actor-critics)
    supports_data_parallel = True  # runs with several processes (gradients averaged after each backward pass)
    supports_sharding = True  # the policy may be sharded over the processes (FSDP, accelerate.sharding)
    timed_phases: tuple[str, ...] = ("update",)  # seconds shown on each iteration's line
    # Whether a guard can need the trainable state after an iteration's first optimizer step (a NaN loss in a
    # later minibatch, the KL guard of the next iteration): only then is a copy of it kept (algos/guards.py).
    rollback_copies = True

    def __init__(
        self,
        config: TrainConfig,
        task: Task | None = None,
        reward: Reward | None = None,
        loaded: LoadedModel | None = None,
        console: Console | None = None,
        resume: bool = False,
        overwrite: bool = False,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.dist = Distributed.setup(
            config.accelerate.mixed_precision, config.accelerate.device, config.accelerate.sharding
        )
        # Only the main process prints, logs and writes files.
        self.console = (console or Console()) if self.dist.is_main else Console(quiet=True)
        if self.dist.enabled or self.dist.device.type != "cpu" or self.dist.mixed_precision != "no":
            self.console.print(
                f"{self.dist.world_size} process(es) on {self.dist.device.type}, "
                f"mixed precision: {self.dist.mixed_precision}"
                + (f", FSDP sharding: {self.dist.sharding}" if self.dist.sharded else "")
            )
        self.check_processes()
        self.check_batch_sizes()
        if self.dist.is_main:
            check_installed(config.tracking.report_to)  # before a model is loaded or a folder written
        self._open_run_folder(resume, overwrite)
        torch.manual_seed(config.seed)
        self.dist.set_threads(config.threads)  # processes on one machine share its cores
        keeps_freed_memory = host_memory.configure(config.accelerate.host_memory, self.dist.device.type)
        self.task = task or load_task(config.task, **config.task_args)
        self.reward = self._build_reward(reward)
        self.metric_set = MetricSet.for_task(self.task, config.eval.metrics)  # eval.metrics, checked before loading
        self.train_samples: list[Sample] = self.task.split("train")
        self._check_prompts(loaded)
        self._build_models(loaded or load_model(config.model.name, config.model.dtype, config.model.trust_remote_code))
        self.optimizer = self.make_optimizer()
        self.rollback = Rollback(
            copies=config.guards.rollback and self.rollback_copies, trim_heap=not keeps_freed_memory
        )
        # Every optimizer step changes the trainable state: the first of an iteration keeps a copy of it first.
        self.optimizer.register_step_pre_hook(lambda *_: self.changing_state())
        self.dist.broadcast_parameters(self.policy)  # replicas start equal even if a random init differed
        self.start_iteration = 1
        self.iteration = 0  # the one being trained (seeds its minibatch order)
        self.before: dict[str, float] | None = None
        self.before_samples: list[dict[str, Any]] = []
        self.resumed = resume
        self.stop_reason: str | None = None
        self.trackers = Trackers.none()  # opened when training starts (main process)
        self._prepare_run_dir(resume, overwrite)
        try:
            self.prepare_data()
        except BaseException:
            self.discard_if_untrained()
            raise

    # --- what subclasses provide -------------------------------------------------------------------

    @property
    def algo_config(self) -> Any:
        """The config section of the algorithm (``config.ppo`` for algo=ppo, ...)."""
        return getattr(self.config, self.config.algo)

    def check_processes(self) -> None:
        """Refuse several processes for an algorithm that runs in one."""
        if self.dist.enabled and not self.supports_data_parallel:
            raise DistributedError(f"algo={self.config.algo} runs in one process only; launch it without torchrun")

    def check_batch_sizes(self) -> None:
        """Refuse batch settings that do not split over the processes (called before anything is loaded)."""

    def build_extras(self) -> None:
        """Create algorithm state beyond the policy (runs before sharding, the optimizer and any resume)."""

    def prepare_data(self) -> None:
        """Read or make the training data once the run folder exists (the offline trainers' datasets)."""

    def step(self, iteration: int) -> dict[str, Any]:
        """Train one iteration; returns its record for metrics.jsonl."""
        raise NotImplementedError

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """Modules saved beside the policy in each checkpoint (file name → module)."""
        return {}

    def trainer_state(self, iteration: int) -> dict[str, Any]:
        """JSON-able state saved in each checkpoint; subclasses add theirs."""
        return {
            "iteration": iteration,
            "before": self.before,
            "before_samples": self.before_samples[:3],
            "config": self.config.model_dump(mode="json"),
            # fp16's loss scale, which took many steps to settle: a resume must not start it over.
            "grad_scaler": self.dist.scaler.state_dict() if self.dist.scaler is not None else None,
            # Running statistics of stateful rewards (reward.normalize): a resume continues them.
            "reward_state": reward_state(self.reward),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        load_reward_state(self.reward, state.get("reward_state", {}))
        if self.dist.scaler is not None and state.get("grad_scaler"):
            self.dist.scaler.load_state_dict(state["grad_scaler"])
        self.before, self.before_samples = state.get("before"), state.get("before_samples", [])

    def status(self, record: dict[str, Any]) -> str:
        """The short progress line of one iteration's record (with `it N` and the phase seconds it fits an
        80-column terminal)."""
        return f"loss {record['loss/total']:.4f}"

    def status_legend(self) -> str:
        """What `status` shows, printed once before the first iteration."""
        return "training loss (an iteration is a gradient step)"

    # --- setup -----------------------------------------------------------------------------------

    def _open_run_folder(self, resume: bool, overwrite: bool) -> None:
        """The run folder: named, found by --resume, or new; the main process decides and tells the others.
        Checked before any model is loaded, so a name clash costs no compute."""
        folder, found = self.dist.broadcast_object(run_folder(self.config, resume) if self.dist.is_main else None)
        self.run = RunDir(folder)
        if found:
            self.console.print(f"[bold]--resume[/] picked {folder}: {found}")
        if not resume and not overwrite and self.run.root.exists() and any(self.run.root.iterdir()):
            raise RunExistsError(
                f"run folder {self.run.root} exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another name (--set name=...)"
            )
        if resume and not (self.run.root / "config.yaml").exists():
            raise MissingFileError(f"--resume: there is no run at {self.run.root} (no config.yaml)")
        self.dist.barrier()  # every rank has looked at the run folder before the main one writes it

    def _build_reward(self, reward: Reward | None) -> Reward:
        built = as_reward(reward) if reward is not None else build_reward(self.config.reward, self.task.reward)
        if built is None:
            raise ConfigError(
                f"task {self.config.task!r} has no default reward: give one in the config's reward section"
            )
        if self.dist.enabled:  # running reward statistics are those of the global batch
            for _, node in walk(built):
                if hasattr(node, "sum_over_processes"):
                    node.sum_over_processes = self._sum_floats
        return built

    def _sum_floats(self, values: list[float]) -> list[float]:
        return self.dist.sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def _check_prompts(self, loaded: LoadedModel | None) -> None:
        """Prompts against the token budget, with the tokenizer alone, before any weights are loaded."""
        cfg = self.config
        tokenizer = loaded.tokenizer if loaded else load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
        configure_tokenizer(tokenizer, cfg, self.task)
        for split, samples in (("train", self.train_samples), (cfg.eval.split, self.eval_samples)):
            check_prompt_lengths(tokenizer, samples, cfg, split)

    def _build_models(self, loaded: LoadedModel) -> None:
        """The policy (value head per `uses_critic`), the frozen reference, LoRA or frozen blocks, sharding and
        the generation settings."""
        cfg = self.config
        self.tokenizer = loaded.tokenizer
        configure_tokenizer(self.tokenizer, cfg, self.task)
        model = loaded.model.to(self.dist.device)
        if cfg.accelerate.gradient_checkpointing:
            gradient_checkpointing(model)
        if cfg.peft is not None:
            if cfg.model.trainable_layers is not None:
                raise ConfigError(
                    "model.trainable_layers does not combine with peft: with LoRA only the adapters train"
                )
            # The reference is then this same module with its adapters off: no copy of the base weights.
            model = add_lora(model, cfg.peft, loaded.is_seq2seq, cfg.model.name)
        self.reference = ReferenceModel(model, loaded.is_seq2seq)
        if cfg.peft is None:
            freeze(model, cfg.model.embeddings_frozen, cfg.model.trainable_layers)
            # Sharded blocks are gathered through their FSDP hooks; a pass that starts mid-stack would skip them.
            if cfg.rollout.reuse_frozen_trunk and not self.dist.sharded:
                self.reference.share_frozen_trunk(model)
        value_head = cfg.model.value_head if self.uses_critic else "none"
        self.policy = Policy(model, loaded.tokenizer, loaded.is_seq2seq, value_head=value_head).to(self.dist.device)
        check_generation_backend(cfg.generation.backend, self.dist.device)
        self.build_extras()  # before sharding: extras copied from the policy (NLPO's mask policy) stay whole
        if self.dist.sharded:
            self._shard()
        self.max_new_tokens = self.task.horizon(cfg.generation.max_new_tokens)
        check_context(cfg, self.max_new_tokens, loaded.model.config, loaded.is_seq2seq)
        self.generation = generation_config(cfg.generation, self.task, self.tokenizer)
        self.temperature = cfg.generation.temperature if cfg.generation.do_sample else 1.0

    def _shard(self) -> None:
        """FSDP: split the policy's, its critic's and the reference's language models over the ranks."""
        if not self.supports_sharding:
            raise DistributedError(
                f"algo={self.config.algo} does not run with sharded weights; use accelerate.sharding=none (data "
                "parallel) or one of ppo, nlpo, a2c, reinforce, rloo, grpo, sft, dpo"
            )
        if self.config.peft is not None:
            raise DistributedError(
                "peft (LoRA) does not combine with accelerate.sharding: the frozen base is shared with the "
                "reference and the adapters are small, so run LoRA with accelerate.sharding=none"
            )
        for lm in (self.policy.model, self.policy.critic, self.reference.model):
            if lm is not None:
                self.dist.shard_model(lm, [block for stack in transformer_blocks(lm) for block in stack])
        self.policy.synced = True

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters; a value head gets its own learning rate."""
        cfg = self.algo_config
        head = list(self.policy.value_head.parameters()) if self.policy.value_head is not None else []
        head_ids = {id(p) for p in head}
        rest = [p for p in self.policy.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": rest}]
        if head:
            groups.append({"params": head, "lr": cfg.value_head_lr or cfg.lr})
        return adamw(groups, cfg.lr, cfg.weight_decay, self.fused_optimizer)

    @property
    def fused_optimizer(self) -> bool:
        """accelerate.fused_optimizer, where the fused kernel applies (not to FSDP's sharded parameters)."""
        return self.config.accelerate.fused_optimizer and not self.dist.sharded

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Create (or resume) the run folder. Every rank loads a resumed checkpoint (it holds the whole,
        replicated state, so any number of processes can continue it); only the main one writes."""
        main = self.dist.is_main
        if resume:
            if main:
                clean_partial(self.run.checkpoints)
                clean_partial(self.run.root)
            self.dist.barrier()
            found = list_checkpoints(self.run.checkpoints)
            if not found:
                # Killed before its first checkpoint: nothing is lost by starting over.
                self.console.print(f"[bold]no complete checkpoint[/] in {self.run.root} yet: starting it over")
                if main:
                    shutil.rmtree(self.run.root)
                    self._write_run_start()
                self.dist.barrier()
                return
            step, path = found[-1]
            state = load_checkpoint(
                path, self.policy, self.optimizer, self.checkpoint_modules(), self.dist, self.config.peft is not None
            )
            self.restore_state(state)
            self.start_iteration = step + 1
            self.dist.barrier()  # all ranks have read the checkpoint before the main one touches the folder
            if main:
                self.run.truncate_after(step)
                self._write_run_start()  # the resumed run's config (e.g. more iterations)
            self.console.print(f"[bold]resuming[/] {self.run.root} from iteration {step}")
            return
        if main:
            if self.run.root.exists():
                shutil.rmtree(self.run.root)  # only reached with overwrite=True
            self._write_run_start()
        self.dist.barrier()

    def _write_run_start(self) -> None:
        """config.yaml, and this start's line in environment.jsonl (main process)."""
        self.run.create(self.config)
        self.run.log_start(self.start_iteration, self.dist.world_size, self.dist.device.type)

    def discard_if_untrained(self) -> None:
        """Remove the folder of a new run that failed before its first iteration completed (bad input found
        during setup or at the first rollout): nothing is lost, and no half-made run is left behind."""
        if self.resumed or not self.dist.is_main or not self.run.root.exists() or self.run.trained():
            return
        shutil.rmtree(self.run.root, ignore_errors=True)
        self.console.print(f"nothing was trained: removed the new run folder {self.run.root}")

    # --- the loop --------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        try:
            if self.dist.is_main:
                self.open_trackers()
            result = self._train()
        except BaseException:
            self.trackers.close(failed=True)
            self.discard_if_untrained()
            raise
        self.trackers.close()
        return result

    def open_trackers(self) -> None:
        """Start the experiment trackers (``tracking.report_to``), or continue their runs after a resume."""
        resumed_from = self.start_iteration - 1 if self.start_iteration > 1 else None
        self.trackers = Trackers.open(self.config, self.run, resumed_from)
        if self.trackers.backends:
            self.console.print(f"tracking: {self.trackers.describe()}", highlight=False)

    def _train(self) -> TrainResult:
        cfg = self.config
        if self.before is None:
            with self.console.status("evaluating the initial policy"):
                self.before, records = self.evaluate(0)
            self.before_samples = records[:3]
        history: list[dict[str, Any]] = []
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.console.print(f"it N: {self.status_legend()} | seconds: {'+'.join(self.timed_phases)}", highlight=False)
        with Progress(*columns, console=self.console, transient=False) as progress:
            done = self.start_iteration - 1
            bar = progress.add_task(f"{cfg.algo} on {cfg.task}", total=cfg.iterations, completed=done)
            started = last_save = time.perf_counter()
            last = done
            for iteration in range(self.start_iteration, cfg.iterations + 1):
                record = self.step(iteration)
                record.update(self.after_step(iteration))
                self.log(record)
                history.append(record)
                last = iteration
                progress.update(bar, advance=1)
                seconds = "+".join(f"{record[f'time/{p}']:.1f}" for p in self.timed_phases)
                progress.console.print(f"it {iteration:>3}  {self.status(record)}  {seconds}s", highlight=False)
                self._call_iteration_callbacks(iteration, record)
                if cfg.eval.every and iteration % cfg.eval.every == 0 and iteration < cfg.iterations:
                    self.evaluate(iteration)
                minutes = cfg.checkpoint.every_minutes
                due = minutes is not None and self.dist.any(time.perf_counter() - last_save >= 60 * minutes)
                if (cfg.checkpoint.every and iteration % cfg.checkpoint.every == 0) or due:
                    self.save(iteration)
                    last_save = time.perf_counter()
                if cfg.max_train_seconds is not None and self.dist.any(
                    time.perf_counter() - started >= cfg.max_train_seconds  # all ranks stop at the same iteration
                ):
                    self.stop_reason = "max_train_seconds reached"
                if self.dist.any(self.stop_reason is not None):
                    progress.console.print(f"stopping after iteration {iteration}: {self.stop_reason or 'asked to'}")
                    break
        after, after_records = self.evaluate(last, final=True)
        if not (self.run.checkpoints / f"step-{last}").exists():
            self.save(last)
        final_state = self.dist.full_state_dict(self.policy.model) if self.dist.sharded else None
        if self.dist.is_main:
            self.save_final(final_state)
            self.write_model_card(last, after, self.run.plot())
            self._call("on_save", self.run.final)  # final/ is complete: weights, extras, card
            self.report(after, after_records)
        self.dist.barrier()
        return TrainResult(self.run.root, self.before, after, history)

    def after_step(self, iteration: int) -> dict[str, Any]:
        """Work after an iteration's update that adds to its record (RLHF's reward-model refresh)."""
        return {}

    def request_stop(self, reason: str = "a callback asked to stop") -> None:
        """End training after the current iteration (final evaluation and final/ as usual)."""
        self.stop_reason = reason

    def log(self, record: dict[str, Any]) -> None:
        """One record of metrics.jsonl, also sent to the experiment trackers (main process)."""
        if self.dist.is_main:
            self.run.log_metrics(record)
            self.trackers.log_record(record)

    def _call(self, hook: str, *args: Any) -> list[Any]:
        """Call ``hook`` on every callback that has it; an exception is the user's code (named)."""
        results = []
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is None:
                continue
            try:
                results.append(method(*args))
            except LmgymError:
                raise
            except Exception as err:
                raise UserCodeError(f"callback {type(callback).__name__}.{hook}", err) from err
        return results

    def _call_iteration_callbacks(self, iteration: int, record: dict[str, Any]) -> None:
        if any(result is True for result in self._call("on_iteration_end", iteration, record, self)):
            self.request_stop(f"a callback asked to stop after iteration {iteration}")

    # --- evaluation -------------------------------------------------------------------------------

    @property
    def eval_samples(self) -> list[Sample]:
        return self.task.split(self.config.eval.split)[: self.config.eval.num_prompts]

    def evaluate(self, iteration: int, final: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Score the held-out prompts and log them; ``final`` marks the end-of-run evaluation, which
        comes after the last checkpoint and is therefore redone by a resume.

        With several processes only the main one evaluates (and returns empty results on the others); with
        sharded weights all take part in its forward passes."""
        if not self.dist.is_main and not self.dist.sharded:
            return {}, []
        cfg = self.config.eval
        with self.dist.autocast():
            metrics, records = evaluate(
                self.policy,
                self.reference,
                self.reward,
                self.eval_samples,
                self.generation,
                self.config.model.max_prompt_tokens,
                cfg.batch_size,
                cfg.seed,
            )
        if not self.dist.is_main:
            return {}, []
        self.add_metric_set(metrics, records)
        tag = {"iteration": iteration, "kind": "eval", **({"final": True} if final else {})}
        self.log({**tag, **{f"eval/{k}": v for k, v in metrics.items()}})
        self.run.log_samples([{**tag, **r} for r in records])
        self.trackers.log_samples(iteration, records, self.config.tracking.samples)
        self._call("on_evaluate", iteration, metrics)
        return metrics, records

    def add_metric_set(self, metrics: dict[str, float], records: list[dict[str, Any]]) -> None:
        """Add the scores of ``eval.metrics`` (by default the task's metric set) to an evaluation's metrics (the
        evaluation's own keys first) and each sample's values to its record; say once which cannot run here."""
        scored = self.metric_set.score(self.eval_samples, [r["generation"] for r in records])
        for key, value in scored.scores.items():
            metrics.setdefault(key, value)
        for key, values in scored.per_sample.items():
            for record, value in zip(records, values, strict=True):
                record.setdefault("metrics", {})[key] = value
        for name, why in scored.missing.items():
            self.console.print(f"eval.metrics: {name} is left out: {why}", highlight=False, markup=False)

    # --- numerical guards (algos/guards.py) -------------------------------------------------------

    def begin_iteration(self, iteration: int) -> None:
        """Mark the start of ``iteration`` for the guards (its starting trainer state is kept, as JSON)."""
        self.rollback.begin(iteration, self.trainer_state(iteration - 1))

    def changing_state(self) -> None:
        """Call before anything but an optimizer step changes the trainable state (TRPO's line search, NLPO's
        mask refresh); the iteration's first change keeps a copy of the state first (guards.rollback)."""
        self.rollback.changing(self.policy, self.optimizer, self.checkpoint_modules())

    def fail(self, iteration: int, problem: str, good: Snapshot | None, cause: BaseException | None = None) -> NoReturn:
        """Save the last good state as the newest checkpoint, then stop with an error naming the problem
        (chained to ``cause``, e.g. the exception a user's reward raised, for `lmgym ... --debug`)."""
        if good is not None and good.iteration == 0 and not self.resumed:
            # Nothing was trained yet: there is no state worth a checkpoint (train() removes the new folder).
            raise TrainingError(f"iteration {iteration}: {problem}. Nothing had been trained yet") from cause
        if good is None:
            newest = list_checkpoints(self.run.checkpoints)
            where = f"the newest checkpoint is {newest[-1][1]}" if newest else "no checkpoint was written"
            raise TrainingError(
                f"iteration {iteration}: {problem}. No good state was kept in memory; {where}"
            ) from cause
        if good.tensors is not None:  # else the live tensors are still the good state
            restore_tensors(good.tensors, self.policy, self.optimizer, self.checkpoint_modules())
        self.restore_state(good.trainer_state)
        path = self.run.checkpoints / f"step-{good.iteration}"
        policy_state, optimizer_state = self.gathered_state()
        if self.dist.is_main:  # every rank restored the same state; one writes it
            reject_after(self.run.checkpoints, good.iteration)
            if not path.exists():
                save_checkpoint(
                    path, self.policy, self.optimizer, good.trainer_state, self.checkpoint_modules(),
                    policy_state, optimizer_state,
                )  # fmt: skip
        self.dist.barrier()
        raise TrainingError(
            f"iteration {iteration}: {problem}. The last good state (after iteration {good.iteration}) is saved in "
            f"{path}; fix the cause and continue with --resume"
        ) from cause

    # --- checkpoints and the final model ------------------------------------------------------------

    def gathered_state(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        """With sharded weights, the policy's and optimizer's whole tensors on the main process (collective);
        with LoRA, only the trainable tensors (adapters, value head: the frozen base is the model folder's);
        otherwise (None, None): the modules' own state dicts."""
        if self.config.peft is not None:
            return {n: p.detach() for n, p in self.policy.named_parameters() if p.requires_grad}, None
        if not self.dist.sharded:
            return None, None
        return self.dist.full_state_dict(self.policy), self.dist.full_optimizer_state(self.policy, self.optimizer)

    def save(self, iteration: int) -> None:
        """Write a checkpoint (main process only: the replicas are identical, or gathered from the shards)."""
        policy_state, optimizer_state = self.gathered_state()
        path = self.run.checkpoints / f"step-{iteration}"
        if self.dist.is_main:
            save_checkpoint(
                path,
                self.policy,
                self.optimizer,
                self.trainer_state(iteration),
                self.checkpoint_modules(),
                policy_state,
                optimizer_state,
            )
            prune_checkpoints(self.run.checkpoints, self.config.checkpoint.keep)
            self._call("on_save", path)
        self.dist.barrier()

    def save_final(self, model_state: dict[str, torch.Tensor] | None = None) -> None:
        """Write final/ (main process); ``model_state``: the language model's whole tensors of a sharded run."""
        final = self.run.final
        tmp = final.with_name(".tmp-final")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.config.peft is not None:
            # final/adapter/ holds the LoRA adapter; final/ the merged model (a plain checkpoint) when asked.
            tmp.mkdir(parents=True)
            save_adapter(self.policy.model, tmp / "adapter", tmp if self.config.peft.merge_on_save else None)
        else:
            self.policy.model.save_pretrained(tmp, state_dict=model_state)
        self.tokenizer.save_pretrained(tmp)
        if self.policy.value_head is not None:
            save_file(
                {k: v.contiguous() for k, v in self.policy.value_head.state_dict().items()},
                str(tmp / "value_head.safetensors"),
            )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def write_model_card(self, iterations: int, after: dict[str, float], plot: Path | None) -> None:
        """final/README.md: a Hugging Face model card (lmgym.algos.model_card) with the reward plot beside it."""
        card = model_card(
            self.config,
            self.config.tracking.run_name or self.run.root.name,
            self.task.description,
            getattr(self.reward, "name", type(self.reward).__name__),
            iterations,
            self.max_new_tokens,
            self.before or {},
            after,
            plot.name if plot is not None else None,
            self.policy.is_seq2seq,
        )
        write_model_card(self.run.final, card, plot)

    def report(self, after: dict[str, float], after_records: list[dict[str, Any]]) -> None:
        print_comparison(self.console, self.before or {}, after, self.before_samples, after_records)
        self.console.print(f"run written to [bold]{self.run.root}[/] (plots: {self.run.plots})")


def print_comparison(
    console: Console,
    before: dict[str, float],
    after: dict[str, float],
    before_samples: list[dict[str, Any]],
    after_samples: list[dict[str, Any]],
) -> None:
    table = Table(title="held-out evaluation")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key in after:
        b, a = before.get(key, float("nan")), after[key]
        table.add_row(key, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}")
    console.print(table)
    by_id = {r["id"]: r for r in after_samples}
    samples = Table(title="samples", show_lines=True)
    for col in ("prompt", "before", "after"):
        samples.add_column(col, overflow="fold")
    for rec in before_samples[:3]:
        new = by_id.get(rec["id"], {})
        samples.add_row(
            str(rec["prompt"]),
            f"{rec['generation']}  [dim]({rec['reward']:+.2f})[/]",
            f"{new.get('generation', '')}  [dim]({new.get('reward', float('nan')):+.2f})[/]",
        )
    console.print(samples)
