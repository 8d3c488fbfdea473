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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from safetensors.torch import save_file

from lmgym.algos.advantages import gae, masked_mean, whiten
from lmgym.algos.rollout import Rollout, collect_rollout
from lmgym.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from lmgym.config import TrainConfig
from lmgym.data.sample import Sample
from lmgym.data.task import Task, load_task
from lmgym.evaluation import evaluate
from lmgym.models.loading import LoadedModel, load_model
from lmgym.models.policy import Policy, ReferenceModel, freeze, make_generation_config
from lmgym.rewards.base import Reward, as_reward
from lmgym.rewards.kl import make_kl_controller
from lmgym.tracking import RunDir

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the message names where."""


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
        self.console = console or Console()
        if config.rollout.batch_size % self.samples_per_prompt:
            raise ValueError(
                f"rollout.batch_size ({config.rollout.batch_size}) must be a multiple of "
                f"{config.algo}.k ({self.samples_per_prompt}): it counts completions, k per prompt"
            )
        name = config.name or f"{config.task}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run = RunDir(Path(config.run_dir) / name)
        if not resume and not overwrite and self.run.root.exists() and any(self.run.root.iterdir()):
            # Checked before any model is loaded, so a name clash costs no compute.
            raise FileExistsError(
                f"run folder {self.run.root} exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another name (--set name=...)"
            )
        torch.manual_seed(config.seed)
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self.task = task or load_task(config.task, **config.task_args)
        self.reward = as_reward(reward) if reward is not None else self.task.reward
        self.train_samples: list[Sample] = self.task.split("train")
        loaded = loaded or load_model(config.model.name, config.model.dtype, config.model.trust_remote_code)
        self.tokenizer = loaded.tokenizer
        value_head = config.model.value_head if self.uses_critic else "none"
        self.reference = ReferenceModel(loaded.model, loaded.is_seq2seq)
        freeze(loaded.model, config.model.freeze_embeddings, config.model.trainable_layers)
        self.policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head=value_head)
        self.build_extras()
        self.kl_ctl = make_kl_controller(config.kl.controller, config.kl.coef, config.kl.target, config.kl.horizon)
        self.max_new_tokens = config.generation.max_new_tokens or int(self.task.generation.get("max_new_tokens", 32))
        self.generation = make_generation_config(self.tokenizer, **config.generation.hf_settings(self.max_new_tokens))
        self.temperature = config.generation.temperature if config.generation.do_sample else 1.0
        self.optimizer = self.make_optimizer()
        self.start_iteration = 1
        self.before: dict[str, float] | None = None
        self.before_samples: list[dict[str, Any]] = []
        self._prepare_run_dir(resume, overwrite)

    # --- setup -----------------------------------------------------------------------------------

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

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> None:
        if resume:
            found = list_checkpoints(self.run.checkpoints)
            if not found:
                raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run.checkpoints}")
            step, path = found[-1]
            state = load_checkpoint(path, self.policy, self.optimizer, self.checkpoint_modules())
            self.restore_state(state)
            self.start_iteration = step + 1
            self.run.truncate_after(step)
            self.run.create(self.config)  # the resumed run's config (e.g. more iterations)
            self.console.print(f"[bold]resuming[/] {self.run.root} from iteration {step}")
            return
        if self.run.root.exists():
            shutil.rmtree(self.run.root)  # only reached with overwrite=True
        self.run.create(self.config)

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
        )

    def kl_penalised_rewards(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token R̂ = R − β·(log πθ − log π0) and the per-token KL estimate, both [B, G]."""
        kl = (rollout.logprobs - rollout.ref_logprobs) * rollout.mask
        return rollout.task_rewards - self.kl_ctl.value * kl, kl

    def advantages(self, rollout: Rollout, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.algo_config
        advantages, returns = gae(rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, rollout.mask)
        return advantages, returns

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def step(self, iteration: int) -> dict[str, Any]:
        torch.manual_seed(self.config.seed * 1_000_003 + iteration)  # makes a resumed run exact
        k = self.samples_per_prompt
        idx = prompt_indices(len(self.train_samples), self.config.rollout.batch_size // k, iteration, self.config.seed)
        rollout = self.rollout([self.train_samples[i] for i in idx for _ in range(k)])
        rewards, kl = self.kl_penalised_rewards(rollout)
        advantages, returns = self.advantages(rollout, rewards)
        t0 = time.perf_counter()
        stats = self.update(rollout, advantages, returns)
        rollout.seconds["update"] = time.perf_counter() - t0
        for key, value in stats.items():
            if not math.isfinite(value):
                raise TrainingError(f"iteration {iteration}: {key} is {value}; stopping before the weights are saved")
        kl_per_seq = float(kl.sum(-1).mean())
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(kl_per_seq, len(rollout.samples))
        n_gen = int(rollout.mask.sum())
        record: dict[str, Any] = {
            "iteration": iteration,
            "kind": "train",
            "reward/task": float(rollout.sample_rewards.mean()),
            "reward/task_std": float(rollout.sample_rewards.std()) if len(rollout.samples) > 1 else 0.0,
            "reward/penalised": float((rewards * rollout.mask).sum(-1).mean()),
            "kl": kl_per_seq,
            "kl_coef": kl_coef,
            "entropy": float(masked_mean(rollout.entropy, rollout.mask)),
            "gen_len": float(rollout.gen_lengths.float().mean()),
            "prompts_truncated": rollout.extras.get("n_truncated", 0),
            **stats,
        }
        if rollout.values is not None:
            record["explained_var"] = explained_variance(rollout.values, returns, rollout.mask)
        for phase, seconds in rollout.seconds.items():
            record[f"time/{phase}"] = seconds
            record[f"tokens_per_s/{phase}"] = n_gen / seconds if seconds > 0 else float("nan")
        return record

    # --- the loop --------------------------------------------------------------------------------

    def evaluate(self, iteration: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        cfg = self.config.eval
        samples = self.task.split(cfg.split)[: cfg.num_prompts]
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
        self.run.log_metrics({"iteration": iteration, "kind": "eval", **{f"eval/{k}": v for k, v in metrics.items()}})
        self.run.log_samples([{"iteration": iteration, **r} for r in records])
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
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.before, self.before_samples = state.get("before"), state.get("before_samples", [])

    def save(self, iteration: int) -> None:
        save_checkpoint(
            self.run.checkpoints / f"step-{iteration}",
            self.policy,
            self.optimizer,
            self.trainer_state(iteration),
            self.checkpoint_modules(),
        )
        prune_checkpoints(self.run.checkpoints, self.config.checkpoint.keep)

    def train(self) -> TrainResult:
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
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            bar = progress.add_task(
                f"{cfg.algo} on {cfg.task}", total=cfg.iterations, completed=self.start_iteration - 1, status=""
            )
            started, last = time.perf_counter(), self.start_iteration - 1
            for iteration in range(self.start_iteration, cfg.iterations + 1):
                record = self.step(iteration)
                self.run.log_metrics(record)
                history.append(record)
                last = iteration
                status = (
                    f"reward {record['reward/task']:+.3f}  kl {record['kl']:.2f}  β {record['kl_coef']:.3f}  "
                    f"len {record['gen_len']:.1f}"
                )
                progress.update(bar, advance=1, status=status)
                progress.console.print(
                    f"it {iteration:>3}  {status} |"
                    + "".join(f" {p} {record[f'time/{p}']:.1f}s" for p in ("generate", "score", "update")),
                    highlight=False,
                )
                if cfg.eval.every and iteration % cfg.eval.every == 0 and iteration < cfg.iterations:
                    self.evaluate(iteration)
                if cfg.checkpoint.every and iteration % cfg.checkpoint.every == 0:
                    self.save(iteration)
                if cfg.max_train_seconds is not None and time.perf_counter() - started >= cfg.max_train_seconds:
                    progress.console.print(f"stopping after iteration {iteration}: max_train_seconds reached")
                    break
        after, after_records = self.evaluate(last)
        self.save(last)
        self.save_final()
        self.run.plot()
        self.report(after, after_records)
        return TrainResult(self.run.root, self.before, after, history)

    def save_final(self) -> None:
        final = self.run.final
        tmp = final.with_name(".tmp-final")
        shutil.rmtree(tmp, ignore_errors=True)
        self.policy.model.save_pretrained(tmp)
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


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
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
