"""The shared on-policy loop: sample prompts, roll out, shape rewards, update, log.

Algorithms subclass `OnPolicyTrainer` and implement `update()`; critic-free ones
also override `advantages()`. One iteration:

    prompts ─▶ generate ─▶ score (policy + reference, one pass each) ─▶ task reward
            ─▶ R̂_t = R_t − β·(log πθ − log π0)_t ─▶ GAE ─▶ update ─▶ β update
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from safetensors.torch import save_file

from lmgym.algos.advantages import gae, global_masked_moments, masked_mean, whiten
from lmgym.algos.rollout import Rollout, check_generation_backend, collect_rollout
from lmgym.checkpoint import (
    clean_partial,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    reject_after,
    save_checkpoint,
)
from lmgym.config import ConfigError, TrainConfig
from lmgym.data.sample import Sample
from lmgym.data.task import Task, load_task
from lmgym.distributed import Distributed, DistributedError
from lmgym.errors import InputError, MissingFileError, RunExistsError, UserCodeError
from lmgym.evaluation import evaluate
from lmgym.guards import Snapshot, TrainingError, describe_sample, restore_snapshot, take_snapshot
from lmgym.models.loading import LoadedModel, load_model, load_tokenizer, set_truncation_side
from lmgym.models.lora import add_lora, save_adapter
from lmgym.models.policy import (
    Policy,
    ReferenceModel,
    freeze,
    gradient_checkpointing,
    make_generation_config,
    transformer_blocks,
)
from lmgym.preflight import check_context, check_prompt_lengths
from lmgym.rewards.base import Reward, RewardError, as_reward, load_reward_state, reward_state, walk
from lmgym.rewards.factory import build_reward
from lmgym.rewards.kl import make_kl_controller
from lmgym.tracking import RunDir, run_folder

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


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


class OnPolicyTrainer:
    uses_critic = True
    # Whether the update runs with several processes (gradients averaged after each backward pass).
    supports_data_parallel = True
    # Whether the policy may be sharded over the processes (FSDP, accelerate.sharding).
    supports_sharding = True

    @property
    def samples_per_prompt(self) -> int:
        """Completions drawn for each prompt (k of group-based algorithms; 1 otherwise)."""
        return int(getattr(self.algo_config, "k", 1))

    def __init__(
        self,
        config: TrainConfig,
        task: Task | None = None,
        reward: Reward | None = None,
        loaded: LoadedModel | None = None,
        console: Console | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.config = config
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
        if config.rollout.batch_size % self.samples_per_prompt:
            raise InputError(
                f"rollout.batch_size ({config.rollout.batch_size}) must be a multiple of "
                f"{config.algo}.k ({self.samples_per_prompt}): it counts completions, k per prompt"
            )
        self.check_data_parallel()
        # The main process names the run (a timestamp, or the run --resume finds) and tells the others.
        folder, found = self.dist.broadcast_object(run_folder(config, resume) if self.dist.is_main else None)
        self.run = RunDir(folder)
        if found:
            self.console.print(f"[bold]--resume[/] picked {folder}: {found}")
        if not resume and not overwrite and self.run.root.exists() and any(self.run.root.iterdir()):
            # Checked before any model is loaded, so a name clash costs no compute.
            raise RunExistsError(
                f"run folder {self.run.root} exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another name (--set name=...)"
            )
        if resume and not (self.run.root / "config.yaml").exists():
            raise MissingFileError(f"--resume: there is no run at {self.run.root} (no config.yaml)")
        self.dist.barrier()  # every rank has looked at the run folder before the main one writes it
        torch.manual_seed(config.seed)
        self.dist.set_threads(config.threads)  # processes on one machine share its cores
        self.task = task or load_task(config.task, **config.task_args)
        self.reward = as_reward(reward) if reward is not None else build_reward(config.reward, self.task.reward)
        if self.reward is None:
            raise ConfigError(f"task {config.task!r} has no default reward: give one in the config's reward section")
        if self.dist.enabled:  # running reward statistics are those of the global batch
            for _, node in walk(self.reward):
                if hasattr(node, "sum_over_processes"):
                    node.sum_over_processes = self._sum_floats
        if config.rm.retrain_every:
            from lmgym.algos.rm import check_retrainable

            check_retrainable(self.reward)
        self.train_samples: list[Sample] = self.task.split("train")
        # Prompts are checked with the tokenizer alone, before any weights are loaded.
        tokenizer = loaded.tokenizer if loaded else load_tokenizer(config.model.name, config.model.trust_remote_code)
        set_truncation_side(tokenizer, config.model.truncation_side, self.task.truncation_side)
        for split, split_samples in (("train", self.train_samples), (config.eval.split, self.eval_samples)):
            check_prompt_lengths(tokenizer, split_samples, config, split)
        loaded = loaded or load_model(config.model.name, config.model.dtype, config.model.trust_remote_code)
        self.tokenizer = loaded.tokenizer
        set_truncation_side(self.tokenizer, config.model.truncation_side, self.task.truncation_side)
        value_head = config.model.value_head if self.uses_critic else "none"
        model = loaded.model.to(self.dist.device)
        if config.accelerate.gradient_checkpointing:
            gradient_checkpointing(model)
        if config.peft is not None:
            if config.model.trainable_layers is not None:
                raise ConfigError(
                    "model.trainable_layers does not combine with peft: with LoRA only the adapters train"
                )
            # The reference is then this same module with its adapters off: no copy of the base weights.
            model = add_lora(model, config.peft, loaded.is_seq2seq, config.model.name)
        self.reference = ReferenceModel(model, loaded.is_seq2seq)
        if config.peft is None:
            freeze(model, config.model.embeddings_frozen, config.model.trainable_layers)
            # Sharded blocks are gathered through their FSDP hooks; a pass that starts mid-stack would skip them.
            if config.rollout.reuse_frozen_trunk and not self.dist.sharded:
                self.reference.share_frozen_trunk(model)
        self.policy = Policy(model, loaded.tokenizer, loaded.is_seq2seq, value_head=value_head).to(self.dist.device)
        check_generation_backend(config.generation.backend, self.dist.device)
        self.build_extras()  # before sharding: extras copied from the policy (NLPO's mask policy) stay whole
        if self.dist.sharded:
            self.shard()
        kl = config.kl
        self.kl_ctl = make_kl_controller(kl.controller, kl.coef, kl.target, kl.horizon, kl.update_rate)
        self.max_new_tokens = config.generation.max_new_tokens or int(self.task.generation.get("max_new_tokens", 32))
        check_context(config, self.max_new_tokens, loaded.model.config, loaded.is_seq2seq)
        self.generation = make_generation_config(self.tokenizer, **config.generation.hf_settings(self.max_new_tokens))
        self.temperature = config.generation.temperature if config.generation.do_sample else 1.0
        self.optimizer = self.make_optimizer()
        self.dist.broadcast_parameters(self.policy)  # replicas start equal even if a random init differed
        self.start_iteration = 1
        self.iteration = 0  # the one being trained (seeds its minibatch order)
        self._snapshots: list[Snapshot] = []
        self.before: dict[str, float] | None = None
        self.before_samples: list[dict[str, Any]] = []
        self.resumed = resume
        self._prepare_run_dir(resume, overwrite)
        try:
            self.prepare_data()
        except BaseException:
            self.discard_if_untrained()
            raise

    def prepare_data(self) -> None:
        """Read or make the training data once the run folder exists (the offline trainers' datasets)."""

    def discard_if_untrained(self) -> None:
        """Remove the folder of a new run that failed before its first iteration completed (bad input found
        during setup or at the first rollout): nothing is lost, and no half-made run is left behind."""
        if self.resumed or not self.dist.is_main or not self.run.root.exists() or self.run.trained():
            return
        shutil.rmtree(self.run.root, ignore_errors=True)
        self.console.print(f"nothing was trained: removed the new run folder {self.run.root}")

    # --- setup -----------------------------------------------------------------------------------

    def _sum_floats(self, values: list[float]) -> list[float]:
        return self.dist.sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def shard(self) -> None:
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
        cfg = self.algo_config
        head = list(self.policy.value_head.parameters()) if self.policy.value_head is not None else []
        head_ids = {id(p) for p in head}
        rest = [p for p in self.policy.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": rest}]
        if head:
            groups.append({"params": head, "lr": getattr(cfg, "value_head_lr", None) or cfg.lr})
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    @property
    def algo_config(self) -> Any:
        return getattr(self.config, self.config.algo)

    def check_data_parallel(self) -> None:
        """With several processes, the global batch must split evenly: prompts by rank, minibatches too."""
        world = self.dist.world_size
        if world == 1:
            return
        if not self.supports_data_parallel:
            raise DistributedError(f"algo={self.config.algo} runs in one process only; launch it without torchrun")
        prompts = self.config.rollout.batch_size // self.samples_per_prompt
        if prompts % world:
            raise ConfigError(
                f"rollout.batch_size={self.config.rollout.batch_size} gives {prompts} prompts per iteration, which "
                f"do not split over {world} processes: make it a multiple of {world * self.samples_per_prompt}"
            )
        minibatch = getattr(self.algo_config, "minibatch_size", None)
        if minibatch is not None and minibatch % world:
            raise ConfigError(
                f"{self.config.algo}.minibatch_size={minibatch} counts samples of the global batch and must split "
                f"over {world} processes: make it a multiple of {world}"
            )

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
                    self.run.create(self.config)
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
                self.run.create(self.config)  # the resumed run's config (e.g. more iterations)
            self.console.print(f"[bold]resuming[/] {self.run.root} from iteration {step}")
            return
        if main:
            if self.run.root.exists():
                shutil.rmtree(self.run.root)  # only reached with overwrite=True
            self.run.create(self.config)
        self.dist.barrier()

    # --- one iteration ---------------------------------------------------------------------------

    def rollout(self, samples: list[Sample]) -> Rollout:
        return collect_rollout(
            self.policy,
            self.reference,
            self.reward,
            samples,
            self.generation,
            self.config.model.max_prompt_tokens,
            temperature=self.temperature,
            reuse_generation_scores=self.config.rollout.reuse_generation_scores,
            keep_trunk=self.config.rollout.reuse_frozen_trunk and not self.dist.sharded,
        )

    def kl_penalised_rewards(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token R̂ = R − β·(log πθ − log π0) and the per-token KL estimate, both [B, G]."""
        kl = (rollout.logprobs - rollout.ref_logprobs) * rollout.mask
        return rollout.task_rewards - self.kl_ctl.value * kl, kl

    def advantages(self, rollout: Rollout, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.algo_config
        advantages, returns = gae(rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            # With several processes, over the global batch: every rank scales by the same statistics.
            advantages = whiten(advantages, rollout.mask, sum_over_ranks=self.dist.sum if self.dist.enabled else None)
        return advantages, returns

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def minibatches(self, n: int, size: int, epoch: int) -> list[torch.Tensor]:
        """This process's sample indices (of its ``n``) for each optimizer step of ``epoch``: the global batch
        cut into pieces of ``size`` by a permutation seeded by the run's seed, the iteration and the epoch, the
        same on every process and in a one-process run, so W processes take the steps one process would."""
        seed = (self.config.seed * 1_000_003 + self.iteration) * 1_009 + epoch
        return self.dist.local_minibatches(n, size, seed)

    def step(self, iteration: int) -> dict[str, Any]:
        # Makes a resumed run exact; each rank samples its own stream (rank 0's is the single-process one).
        torch.manual_seed(self.config.seed * 1_000_003 + iteration + self.dist.rank * 2**32)
        self.iteration = iteration
        self.snapshot(iteration - 1)
        k = self.samples_per_prompt
        idx = prompt_indices(len(self.train_samples), self.config.rollout.batch_size // k, iteration, self.config.seed)
        idx = self.dist.shard(idx)  # this rank's prompts of the global batch
        error: RewardError | UserCodeError | None = None
        try:
            with self.dist.autocast():
                rollout = self.rollout([self.train_samples[i] for i in idx for _ in range(k)])
        except (RewardError, UserCodeError) as err:  # a bad reward: stop cleanly, keep the last good state
            error = err
        if self.dist.any(error is not None):  # all ranks stop together
            problem = str(error) if error else "a reward failed in another process (its error names the sample)"
            self.fail(iteration, problem, self._snapshots[-1], cause=error)
        rewards, kl = self.kl_penalised_rewards(rollout)
        self.check_kl(iteration, rollout, kl)
        advantages, returns = self.advantages(rollout, rewards)
        t0 = time.perf_counter()
        try:
            stats = self.update(rollout, advantages, returns)
            for key, value in stats.items():
                if not math.isfinite(value):
                    raise TrainingError(f"the update's {key} is {value}")
        except TrainingError as err:
            self.fail(iteration, str(err), self._snapshots[-1])
        rollout.seconds["update"] = time.perf_counter() - t0
        # Per-sample numbers of the global batch (gather is the identity with one process); the KL
        # controller must see the same value on every rank.
        gather = self.dist.gather
        sample_rewards = gather(rollout.sample_rewards)
        kl_per_seq = float(gather(kl.sum(-1)).mean())
        kl_per_token = float(self.dist.sum(kl.sum()) / self.dist.sum(rollout.mask.sum()).clamp(min=1))
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(kl_per_token if self.config.kl.per == "token" else kl_per_seq, len(sample_rewards))
        n_gen = int(self.dist.sum(rollout.mask.sum()))
        sum_over_ranks = self.dist.sum if self.dist.enabled else None
        record: dict[str, Any] = {
            "iteration": iteration,
            "kind": "train",
            "reward/task": float(sample_rewards.mean()),
            "reward/task_std": float(sample_rewards.std()) if len(sample_rewards) > 1 else 0.0,
            "reward/penalised": float(gather((rewards * rollout.mask).sum(-1)).mean()),
            "kl": kl_per_seq,
            "kl_per_token": kl_per_token,
            "kl_coef": kl_coef,
            "entropy": float(
                masked_mean(rollout.entropy, rollout.mask)
                if sum_over_ranks is None
                else global_masked_moments(rollout.entropy, rollout.mask, sum_over_ranks)[0]
            ),
            "gen_len": float(gather(rollout.gen_lengths.float()).mean()),
            "prompts_truncated": int(self.dist.sum(torch.tensor(rollout.extras.get("n_truncated", 0)))),
            **stats,
        }
        if rollout.values is not None:
            record["explained_var"] = explained_variance(rollout.values, returns, rollout.mask, sum_over_ranks)
        for phase, seconds in rollout.seconds.items():
            record[f"time/{phase}"] = seconds
            record[f"tokens_per_s/{phase}"] = n_gen / seconds if seconds > 0 else float("nan")
        return record

    # --- numerical guards (lmgym/guards.py) -------------------------------------------------------

    def snapshot(self, iteration: int) -> None:
        """Keep the trainable state at the end of ``iteration`` (and the one before it) in memory."""
        if not self.config.guards.rollback:
            return
        previous = self._snapshots[-1] if self._snapshots else None
        snap = take_snapshot(
            iteration,
            self.policy,
            self.optimizer,
            self.checkpoint_modules(),
            self.trainer_state(iteration),
            previous,
        )
        self._snapshots = [*self._snapshots[-1:], snap]

    def check_kl(self, iteration: int, rollout: Rollout, kl: torch.Tensor) -> None:
        """Stop when the mean KL per generated token passes ``guards.max_kl``; the weights that produced
        it came out of the previous iteration's update, so the good state is the one before that."""
        bound = self.config.guards.max_kl
        if bound is None:
            return
        n_tokens = rollout.mask.sum()
        per_token = float(kl.sum() / n_tokens.clamp(min=1))
        if self.dist.enabled:  # the global batch's, so that all ranks stop together
            kl_sum, n_tokens = self.dist.sum(torch.stack([kl.sum(), n_tokens.to(kl.dtype)]))
            per_token = float(kl_sum / n_tokens.clamp(min=1))
        if math.isfinite(per_token) and per_token <= bound:
            return
        per_sample = (kl.sum(-1) / rollout.mask.sum(-1).clamp(min=1)).nan_to_num(float("inf"))
        worst = int(per_sample.argmax())
        good = self._snapshots[0] if len(self._snapshots) == 2 else None
        self.fail(
            iteration,
            f"the KL to the reference is {per_token:.3g} nats per token, past guards.max_kl={bound}; the largest is "
            f"{float(per_sample[worst]):.3g} for {describe_sample(rollout.samples[worst], rollout.generations[worst])}",
            good,
        )

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
        restore_snapshot(good, self.policy, self.optimizer, self.checkpoint_modules())
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

    # --- the loop --------------------------------------------------------------------------------

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
        samples = self.eval_samples
        with self.dist.autocast():
            metrics, records = evaluate(
                self.policy,
                self.reference,
                self.reward,
                samples,
                self.generation,
                self.config.model.max_prompt_tokens,
                cfg.batch_size,
                cfg.seed,
            )
        if not self.dist.is_main:
            return {}, []
        tag = {"iteration": iteration, "kind": "eval", **({"final": True} if final else {})}
        self.run.log_metrics({**tag, **{f"eval/{k}": v for k, v in metrics.items()}})
        self.run.log_samples([{**tag, **r} for r in records])
        return metrics, records

    # --- checkpoint hooks: subclasses extend these to save and restore their own state ------------

    def build_extras(self) -> None:
        """Create algorithm state beyond the policy (runs before the optimizer and any resume)."""

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """Modules saved beside the policy in each checkpoint (file name → module)."""
        return {}

    def trainer_state(self, iteration: int) -> dict[str, Any]:
        """JSON-able state saved in each checkpoint."""
        return {
            "iteration": iteration,
            "kl_ctl": self.kl_ctl.state_dict(),
            "before": self.before,
            "before_samples": self.before_samples[:3],
            "config": self.config.model_dump(mode="json"),
            # Running statistics of stateful rewards (reward.normalize): a resume continues them.
            "reward_state": reward_state(self.reward),
            # fp16's loss scale, which took many steps to settle: a resume must not start it over.
            "grad_scaler": self.dist.scaler.state_dict() if self.dist.scaler is not None else None,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        load_reward_state(self.reward, state.get("reward_state", {}))
        if self.dist.scaler is not None and state.get("grad_scaler"):
            self.dist.scaler.load_state_dict(state["grad_scaler"])
        self.before, self.before_samples = state.get("before"), state.get("before_samples", [])

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
        if self.dist.is_main:
            save_checkpoint(
                self.run.checkpoints / f"step-{iteration}",
                self.policy,
                self.optimizer,
                self.trainer_state(iteration),
                self.checkpoint_modules(),
                policy_state,
                optimizer_state,
            )
            prune_checkpoints(self.run.checkpoints, self.config.checkpoint.keep)
        self.dist.barrier()

    def train(self) -> TrainResult:
        try:
            return self._train()
        except BaseException:
            self.discard_if_untrained()
            raise

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
            bar = progress.add_task(
                f"{cfg.algo} on {cfg.task}", total=cfg.iterations, completed=self.start_iteration - 1
            )
            started = last_save = time.perf_counter()
            last = self.start_iteration - 1
            for iteration in range(self.start_iteration, cfg.iterations + 1):
                record = self.step(iteration)
                if cfg.rm.retrain_every and iteration % cfg.rm.retrain_every == 0:  # RLHF: refresh the reward model
                    from lmgym.algos.rm import retrain_on_policy_samples

                    record.update(retrain_on_policy_samples(self, iteration))
                if self.dist.is_main:
                    self.run.log_metrics(record)
                history.append(record)
                last = iteration
                progress.update(bar, advance=1)
                seconds = "+".join(f"{record[f'time/{p}']:.1f}" for p in self.timed_phases)
                progress.console.print(f"it {iteration:>3}  {self.status(record)}  {seconds}s", highlight=False)
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
                    progress.console.print(f"stopping after iteration {iteration}: max_train_seconds reached")
                    break
        after, after_records = self.evaluate(last, final=True)
        if not (self.run.checkpoints / f"step-{last}").exists():
            self.save(last)
        final_state = self.dist.full_state_dict(self.policy.model) if self.dist.sharded else None
        if self.dist.is_main:
            self.save_final(final_state)
            self.run.plot()
            self.report(after, after_records)
        self.dist.barrier()
        return TrainResult(self.run.root, self.before, after, history)

    timed_phases: tuple[str, ...] = ("generate", "score", "update")  # shown on each iteration's line

    def status(self, record: dict[str, Any]) -> str:
        """The short progress line of one iteration's record (it fits an 80-column terminal with `it N` and
        the phase seconds)."""
        return (
            f"reward {record['reward/task']:+.3f}  kl {record['kl']:5.2f}  β {record['kl_coef']:.3f}  "
            f"len {record['gen_len']:4.1f}"
        )

    def status_legend(self) -> str:
        """What `status` shows, printed once before the first iteration."""
        return "task reward, KL (nats/seq), β, tokens"

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

    def report(self, after: dict[str, float], after_records: list[dict[str, Any]]) -> None:
        print_comparison(self.console, self.before or {}, after, self.before_samples, after_records)
        self.console.print(f"run written to [bold]{self.run.root}[/] (plot: {self.run.plots / 'reward_kl.png'})")


def explained_variance(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """1 − Var[R − V] / Var[R] over the unmasked tokens (of the global batch, with ``sum_over_ranks``)."""
    if sum_over_ranks is not None:
        var_returns = float(global_masked_moments(returns, mask, sum_over_ranks)[1])
        if var_returns == 0:
            return float("nan")
        return 1.0 - float(global_masked_moments(returns - values, mask, sum_over_ranks)[1]) / var_returns
    var_returns = float(masked_mean((returns - masked_mean(returns, mask)) ** 2, mask))
    if var_returns == 0:
        return float("nan")
    resid = returns - values
    var_resid = float(masked_mean((resid - masked_mean(resid, mask)) ** 2, mask))
    return 1.0 - var_resid / var_returns


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
            rec["prompt"],
            f"{rec['generation']}  [dim]({rec['reward']:+.2f})[/]",
            f"{new.get('generation', '')}  [dim]({new.get('reward', float('nan')):+.2f})[/]",
        )
    console.print(samples)
