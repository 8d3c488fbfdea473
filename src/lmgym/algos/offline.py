"""`OfflineTrainer`: the base of the trainers that learn from a fixed dataset: SFT, DPO and ILQL.

Everything around the update is `Trainer`'s (run folder, model and frozen reference, held-out evaluation,
checkpoints with exact resume, numerical guards, metrics.jsonl); one "iteration" is one gradient step on
``batch_size`` examples drawn by the same stateless per-epoch permutation as on-policy prompts, so a resumed
run sees the same batches.

A subclass sets how its examples are made (`make_examples`) and its loss (`loss`).

With several processes each takes its share of every batch, and its loss is weighted by its share of the
batch's loss units (tokens for token-mean losses, examples for per-example ones) before the gradients are
averaged, so the step is the one a single process takes on the whole batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmgym.algos.trainer import Trainer, prompt_indices
from lmgym.config import ConfigError
from lmgym.data.preferences import ScoredText, load_scored_texts, write_jsonl
from lmgym.errors import InputError, TrainingError
from lmgym.models.policy import TokenBatch
from lmgym.rollout.logged import log_generations
from lmgym.rollout.sampling import tokenize_prompts
from lmgym.tracking import RunDir

LOGGED_FILE = "data.jsonl"


def completion_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of completions as the policy would emit them: the text's tokens, then EOS."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[*ids, tokenizer.eos_token_id] for ids in encoded]


def make_batch(
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[Sequence[int]],
    max_prompt_tokens: int,
    max_completion_tokens: int,
) -> TokenBatch:
    """Prompts padded as for generation (left for causal models) and completions right-padded, cut to
    ``max_completion_tokens``: the same `TokenBatch` a rollout produces, so `Policy.score` applies."""
    prompt_ids, prompt_mask, _ = tokenize_prompts(tokenizer, list(prompts), max_prompt_tokens)
    rows = [list(ids[:max_completion_tokens]) for ids in completions]
    if any(not row for row in rows):
        raise InputError("a completion has no tokens")
    width = max(len(row) for row in rows)
    gen_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    gen_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        gen_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        gen_mask[i, : len(row)] = 1
    return TokenBatch(prompt_ids, prompt_mask, gen_ids, gen_mask)


def batch_to(batch: TokenBatch, device: torch.device) -> TokenBatch:
    return TokenBatch(*(t.to(device) for t in (batch.prompt_ids, batch.prompt_mask, batch.gen_ids, batch.gen_mask)))


class OfflineRunDir(RunDir):
    """Plots the training loss per gradient step (there is no rollout reward or KL) and the eval reward."""

    def plot(self) -> Path | None:
        records, evals = self.train_and_eval_records()
        if not records:
            return None
        fig, axes = self.figure()
        axes[0].plot([r["iteration"] for r in records], [r["loss/total"] for r in records])
        axes[0].set_xlabel("gradient step")
        axes[0].set_ylabel("training loss")
        axes[1].plot([r["iteration"] for r in evals], [r["eval/reward"] for r in evals], "o--")
        axes[1].set_xlabel("gradient step")
        axes[1].set_ylabel("held-out reward")
        return self.save_figure(fig, "loss_reward.png")


class OfflineTrainer(Trainer):
    # One optimizer step per iteration, every check before it and no KL guard: the live state is always the good
    # one, so the guards need no copy of it.
    rollback_copies = False

    def prepare_data(self) -> None:
        self.run = OfflineRunDir(self.run.root)
        t0 = time.perf_counter()
        self.examples: list[Any] = self.make_examples()
        if not self.examples:
            raise InputError(f"{self.config.algo}: the dataset has no usable example")
        self.data_seconds = time.perf_counter() - t0

    # --- what a subclass provides ----------------------------------------------------------------

    def make_examples(self) -> list[Any]:
        raise NotImplementedError

    def loss(self, examples: list[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """Runs after each optimizer step (ILQL's target-network update)."""

    def loss_units(self, examples: list[Any]) -> float:
        """What the loss of ``examples`` is a mean over: examples here; subclasses with token-mean losses
        count completion tokens. Weights each process's loss with several processes."""
        return float(len(examples))

    def completion_tokens(self, completions: Sequence[Sequence[int]]) -> float:
        """Tokens of the completions as `batch` keeps them (cut to max_completion_tokens)."""
        return float(sum(min(len(ids), self.algo_config.max_completion_tokens) for ids in completions))

    def check_batch_sizes(self) -> None:
        world = self.dist.world_size
        if world > 1 and self.algo_config.batch_size % world:
            raise ConfigError(
                f"{self.config.algo}.batch_size={self.algo_config.batch_size} must split over {world} processes: "
                f"make it a multiple of {world}"
            )

    # --- shared helpers --------------------------------------------------------------------------

    def batch(self, prompts: Sequence[str], completions: Sequence[Sequence[int]]) -> TokenBatch:
        batch = make_batch(
            self.tokenizer,
            prompts,
            completions,
            self.config.model.max_prompt_tokens,
            self.algo_config.max_completion_tokens,
        )
        return batch_to(batch, self.dist.device)

    def logged_generations(self) -> list[ScoredText]:
        """The behaviour data of data='logged': completions of the train prompts sampled from the initial
        policy and scored by the reward. Written to the run folder once; a resumed run reads it back."""
        path = self.run.root / LOGGED_FILE
        if path.exists():
            return load_scored_texts(path)
        cfg = self.algo_config
        samples = self.train_samples[: cfg.logged_prompts] if cfg.logged_prompts else self.train_samples
        self.console.print(f"{self.config.algo}: logging {cfg.logged_per_prompt} completions of {len(samples)} prompts")
        scored: list[ScoredText] | None = None
        if self.dist.is_main or self.dist.sharded:  # sharded weights: every process takes part in generation
            scored = log_generations(
                self.policy,
                self.reward,
                samples,
                self.generation,
                self.config.model.max_prompt_tokens,
                per_prompt=cfg.logged_per_prompt,
                batch_size=self.config.eval.batch_size,
                seed=self.config.seed,
            )
        scored = self.dist.broadcast_object(scored)  # every process learns from the main one's data
        if self.dist.is_main:
            write_jsonl(path, scored)
        self.dist.barrier()
        return scored

    # --- one gradient step -----------------------------------------------------------------------

    def step(self, iteration: int) -> dict[str, Any]:
        torch.manual_seed(self.config.seed * 1_000_003 + iteration)  # makes a resumed run exact
        self.begin_iteration(iteration)
        cfg = self.algo_config
        idx = prompt_indices(len(self.examples), cfg.batch_size, iteration, self.config.seed)
        examples = [self.examples[i] for i in self.dist.shard(idx)]  # this process's share of the batch
        t0 = time.perf_counter()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with self.dist.autocast():
                loss, stats = self.loss(examples)
            if self.dist.any(not bool(torch.isfinite(loss))):  # every process stops, not only the one that saw it
                raise TrainingError(f"the loss is {float(loss)} on examples {self.describe(examples)}")
            (weight,) = self.dist.loss_weights([self.loss_units(examples)])  # exactly 1 with one process
            self.dist.backward(loss if weight == 1.0 else loss * weight)
            self.dist.average_gradients(p for p in self.policy.parameters() if p.requires_grad)
            self.dist.unscale(self.optimizer)
            grad_norm = self.clip_gradients(cfg.max_grad_norm)
            if self.dist.scaler is None and not math.isfinite(float(grad_norm)):
                raise TrainingError(f"the gradient norm is {float(grad_norm)} on examples {self.describe(examples)}")
            self.dist.step(self.optimizer)
            self.after_optimizer_step(iteration)
        except TrainingError as err:
            self.fail(iteration, str(err), self.rollback.current(), cause=err)
        seconds = time.perf_counter() - t0
        values = {"loss/total": float(loss.detach()), "grad_norm": float(grad_norm)}
        values.update({k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in stats.items()})
        if weight != 1.0:  # the batch's statistics, as one process would log them (the weights average to 1)
            values = {k: v * weight for k, v in values.items()}
        record: dict[str, Any] = {"iteration": iteration, "kind": "train", **self.dist.mean_floats(values)}
        record["time/update"] = seconds
        record["examples_per_s"] = len(idx) / seconds if seconds > 0 else float("nan")
        return record

    def describe(self, examples: list[Any]) -> str:
        return ", ".join(repr(getattr(e, "id", "?")) for e in examples[:5]) + (" ..." if len(examples) > 5 else "")

    def clip_gradients(self, max_norm: float | None) -> torch.Tensor:
        return self.dist.clip_grad_norm(self.policy.parameters(), max_norm)
