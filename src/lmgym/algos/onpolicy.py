"""`OnPolicyTrainer`: one iteration of every on-policy algorithm (PPO, NLPO, A2C, TRPO, REINFORCE, RLOO, GRPO).

    prompts ─▶ rollout: generate, score (policy + reference, one pass each), task reward
            ─▶ rewards: R̂_t = R_t − β·(log πθ − log π0)_t                       `kl_penalised_rewards`
            ─▶ advantages and returns (GAE by default)                           `advantages`
            ─▶ update: epochs × minibatches of the global batch, each step minimising
                   policy loss (`policy_loss`) + vf_coef·value loss − ent_coef·entropy (+ PPO-ptx)
            ─▶ β update (adaptive KL controller), numbers of the global batch for the log

An algorithm is a subclass that names its config section and overrides `policy_loss` (a function of the
plain tensors in `PolicyTerms`) and, when its baseline is not a critic, `advantages`; TRPO replaces the whole
`update` by its natural-gradient step, NLPO samples from a masked policy (`rollout`, `score_minibatch`).

With several processes each generates and scores its share of the prompts; the statistics that steer training
(whitening, β, baselines, early stopping) and the logged numbers are those of the global batch (the
`Distributed` helpers), minibatches are cut from the global batch, and gradients are averaged after each
backward pass, so every process takes the step one process would.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmgym.algos.advantages import gae, global_masked_moments, masked_mean, whiten
from lmgym.algos.guards import non_finite_rows
from lmgym.algos.losses import entropy_of, value_loss
from lmgym.algos.rlhf import RewardModelRefresh, check_retrainable
from lmgym.algos.trainer import Trainer, prompt_indices
from lmgym.config import ConfigError, CriticFields
from lmgym.data.sample import Sample, describe_rows, describe_sample
from lmgym.errors import TrainingError, UserCodeError
from lmgym.models.policy import checkpointed_blocks
from lmgym.rewards.base import RewardError
from lmgym.rewards.kl import make_kl_controller
from lmgym.rollout.rollout import Rollout, collect_rollout, sample_records


@dataclass(frozen=True)
class PolicyTerms:
    """What a policy loss sees for one minibatch, all [b, G]: current, old (the rollout's) and reference
    log-probs of the taken tokens, the advantages, and the float token mask."""

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


class OnPolicyTrainer(Trainer):
    timed_phases = ("generate", "score", "update")

    @property
    def uses_critic(self) -> bool:  # type: ignore[override]
        return isinstance(self.algo_config, CriticFields)

    @property
    def samples_per_prompt(self) -> int:
        """Completions drawn for each prompt (k of group-based algorithms; 1 otherwise)."""
        return self.algo_config.completions_per_prompt

    def check_batch_sizes(self) -> None:
        """The global batch must split: into groups of k, then by prompt over the processes, and each
        minibatch too (it counts samples of the global batch)."""
        batch, k, world = self.config.rollout.batch_size, self.samples_per_prompt, self.dist.world_size
        if batch % k:
            raise ConfigError(
                f"rollout.batch_size ({batch}) must be a multiple of {self.config.algo}.k ({k}): it counts "
                "completions, k per prompt"
            )
        if (batch // k) % world:
            raise ConfigError(
                f"rollout.batch_size={batch} gives {batch // k} prompts per iteration, which do not split over "
                f"{world} processes: make it a multiple of {world * k}"
            )
        if self.algo_config.minibatch_size % world:
            raise ConfigError(
                f"{self.config.algo}.minibatch_size={self.algo_config.minibatch_size} counts samples of the global "
                f"batch and must split over {world} processes: make it a multiple of {world}"
            )

    def build_extras(self) -> None:
        kl = self.config.kl
        self.kl_ctl = make_kl_controller(kl.controller, kl.coef, kl.target, kl.horizon, kl.update_rate)
        self.rm_refresh = None
        if self.config.rm.retrain_every:
            check_retrainable(self.reward)
            self.rm_refresh = RewardModelRefresh(self)

    # --- one iteration ---------------------------------------------------------------------------

    def step(self, iteration: int) -> dict[str, Any]:
        # Makes a resumed run exact; each rank samples its own stream (rank 0's is the single-process one).
        torch.manual_seed(self.config.seed * 1_000_003 + iteration + self.dist.rank * 2**32)
        self.iteration = iteration
        self.begin_iteration(iteration)
        self.prepare_iteration(iteration)
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
            self.fail(iteration, problem, self.rollback.current(), cause=error)
        rewards, kl = self.kl_penalised_rewards(rollout)
        self.check_kl(iteration, rollout, kl)
        self.rollback.release_previous()  # the start of the iteration before is no longer needed
        advantages, returns = self.advantages(rollout, rewards)
        t0 = time.perf_counter()
        try:
            stats = self.update(rollout, advantages, returns)
            for key, value in stats.items():
                if not math.isfinite(value):
                    raise TrainingError(f"the update's {key} is {value}")
        except TrainingError as err:
            self.fail(iteration, str(err), self.rollback.current(), cause=err)
        rollout.seconds["update"] = time.perf_counter() - t0
        every = self.config.rollout.log_samples_every
        if every and iteration % every == 0:
            self.log_rollout(iteration, rollout, kl)
        return self.record(iteration, rollout, rewards, kl, returns, stats)

    def log_rollout(self, iteration: int, rollout: Rollout, kl: torch.Tensor) -> None:
        """Append the iteration's samples (every process's share) to rollouts.jsonl (rollout.log_samples_every)."""
        shares = self.dist.gather_objects(sample_records(rollout, kl))
        if self.dist.is_main:
            self.run.log_rollouts([{"iteration": iteration, **r} for share in shares for r in share])

    def prepare_iteration(self, iteration: int) -> None:
        """Work at the start of an iteration, before its rollout (NLPO's mask refresh)."""

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
        """GAE advantages and returns [B, G], whitened over the global batch (actor-critics)."""
        cfg = self.algo_config
        advantages, returns = gae(rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, rollout.mask, sum_over_ranks=self.dist.sum if self.dist.enabled else None)
        return advantages, returns

    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy term of one minibatch (a mean over its tokens) and its statistics."""
        raise NotImplementedError

    # --- the update: epochs × minibatches --------------------------------------------------------

    def minibatches(self, n: int, size: int, epoch: int) -> list[torch.Tensor]:
        """This process's sample indices (of its ``n``) for each optimizer step of ``epoch``: the global batch
        cut into pieces of ``size`` by a permutation seeded by the run's seed, the iteration and the epoch, the
        same on every process and in a one-process run, so W processes take the steps one process would."""
        seed = (self.config.seed * 1_000_003 + self.iteration) * 1_009 + epoch
        return self.dist.local_minibatches(n, size, seed)

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """``epochs`` passes of minibatch gradient steps on `minibatch_loss`. With ``target_kl``, the update
        stops at the first minibatch whose approximate KL (of the global minibatch, measured before its step)
        passes 1.5 × ``target_kl``; that minibatch takes no step (stable-baselines3, RL4LMs). The statistics
        are token-weighted means over the minibatches evaluated; ``update_steps`` counts optimizer steps."""
        cfg = self.algo_config
        old_logprobs = self.old_logprobs(rollout)
        sums: dict[str, float] = defaultdict(float)
        evaluated = steps = 0
        stopped: tuple[int, int] | None = None
        for epoch in range(1, cfg.epochs + 1):
            for number, idx in enumerate(self.minibatches(len(rollout.samples), cfg.minibatch_size, epoch), start=1):
                self.optimizer.zero_grad(set_to_none=True)
                stats = self.backward_minibatch(rollout, idx, advantages, returns, old_logprobs)
                evaluated += 1
                for key, value in stats.items():
                    sums[key] += value
                if cfg.target_kl is not None and self.dist.mean_float(stats["approx_kl"]) > 1.5 * cfg.target_kl:
                    stopped = (epoch, number)
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                sums["grad_norm"] += self.optimizer_step(rollout, idx)  # the same on every rank
                steps += 1
            if stopped is not None:
                break
        self.optimizer.zero_grad(set_to_none=True)  # the gradients are not needed until the next update
        # Every rank's sums hold its token-weighted share (weights average to 1 over the ranks).
        means = self.dist.mean_floats(sums)
        out = {k: v / (evaluated if k != "grad_norm" else max(steps, 1)) for k, v in means.items()}
        out["update_steps"] = float(steps)
        if cfg.target_kl is not None:
            out["early_stop"] = float(stopped is not None)
            out["early_stop_epoch"], out["early_stop_minibatch"] = map(float, stopped or (0, 0))
        return out

    def optimizer_step(self, rollout: Rollout, idx: torch.Tensor) -> float:
        """Average the gradients over the processes, clip them, step; returns the norm before clipping."""
        self.dist.average_gradients(p for p in self.policy.parameters() if p.requires_grad)
        self.dist.unscale(self.optimizer)
        grad_norm = float(self.dist.clip_grad_norm(self.policy.parameters(), self.algo_config.max_grad_norm))
        # With fp16 an overflow is expected now and then: the loss scaler skips that step.
        if self.dist.scaler is None and not math.isfinite(grad_norm):
            raise TrainingError(f"the gradient norm is {grad_norm} {self.culprits(rollout, idx)}")
        self.dist.step(self.optimizer)
        return grad_norm

    def backward_minibatch(
        self,
        rollout: Rollout,
        idx: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        old_logprobs: torch.Tensor,
    ) -> dict[str, float]:
        """`minibatch_loss` and its gradient (summed into ``.grad``), in ``accelerate.grad_accumulation_steps``
        micro-batches (less activation memory, the same optimizer steps). Returns the loss and its parts,
        each weighted by this process's share of the global minibatch's tokens (`Distributed.loss_weights`):
        averaged over the processes they are the global minibatch's token means.

        Each loss is a mean over its own tokens; weighted by its share of the minibatch's tokens, the summed
        (and then rank-averaged) gradient is the token mean of the global minibatch even when completions end
        early and the tokens fall unevenly. With one micro-batch in one process the weight is exactly 1. A
        process may hold fewer samples of a minibatch than there are micro-batches, or none: an empty
        micro-batch then runs one sample with weight 0, so that every process makes the same collective calls
        (FSDP's forward and backward passes are collective)."""
        micros = micro_batch_order(rollout, idx).tensor_split(self.config.accelerate.grad_accumulation_steps)
        weights = self.dist.loss_weights([float(rollout.mask[m].sum()) for m in micros])
        sums: dict[str, float] = defaultdict(float)
        for micro, weight in zip(micros, weights, strict=True):
            if len(micro) == 0:
                micro, weight = torch.zeros(1, dtype=torch.long), 0.0
            with self.dist.autocast(), checkpointed_blocks(self.policy, self.config.accelerate.gradient_checkpointing):
                loss, stats = self.minibatch_loss(rollout, micro, advantages, returns, old_logprobs)
            finite = bool(torch.isfinite(loss))
            if self.dist.any(not finite):  # every rank stops, not only the one that saw it
                where = self.culprits(rollout, micro) if not finite else "in another process's minibatch"
                raise TrainingError(f"the loss is {float(loss.detach())} {where}")
            self.dist.backward(loss if weight == 1.0 else loss * weight)
            for key, value in {**stats, "loss/total": loss}.items():
                sums[key] += weight * (float(value.detach()) if isinstance(value, torch.Tensor) else float(value))
        return dict(sums)

    def minibatch_loss(
        self,
        rollout: Rollout,
        idx: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        old_logprobs: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """policy loss + vf_coef·value loss (with a critic) + ptx_coef·NLL of supervised data − ent_coef·entropy."""
        cfg = self.algo_config
        mask = rollout.mask[idx].float()
        logprobs, entropy, values = self.score_minibatch(rollout, idx, with_entropy=cfg.ent_coef != 0)
        terms = PolicyTerms(logprobs, old_logprobs[idx], rollout.ref_logprobs[idx], advantages[idx], mask)
        loss, stats = self.policy_loss(terms)
        stats["loss/policy"] = loss
        if values is not None:
            stats["loss/value"] = value_loss(values, rollout.values[idx], returns[idx], mask, cfg.value_clip)
            loss = loss + cfg.vf_coef * stats["loss/value"]
        if cfg.ptx_coef > 0:  # PPO-ptx: maximise γ·log-likelihood of supervised data too
            stats["loss/ptx"] = self.ptx_nll()
            loss = loss + cfg.ptx_coef * stats["loss/ptx"]
        return loss - cfg.ent_coef * entropy_of(entropy, mask), stats

    def score_minibatch(
        self, rollout: Rollout, idx: torch.Tensor, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """log πθ(a_t|s_t), H[πθ] (or None) and V(s_t) (or None), all [b, G], for the samples ``idx``."""
        scores = self.policy.score(rollout.batch.index(idx), self.temperature, with_entropy=with_entropy)
        return scores.logprobs, scores.entropy, scores.values

    def old_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """log π_old(a_t|s_t) [B, G]: the distribution the rollout was sampled from."""
        return rollout.logprobs

    def ptx_nll(self) -> torch.Tensor:
        """Mean token NLL of a batch of ``ptx_data`` (InstructGPT's pretraining mix; lmgym.algos.sft)."""
        if getattr(self, "_ptx", None) is None:
            from lmgym.algos.sft import PretrainingMix

            cfg = self.algo_config
            self._ptx = PretrainingMix(
                cfg.ptx_data, self.train_samples, self.tokenizer, self.config.model.max_prompt_tokens,
                self.max_new_tokens, cfg.ptx_batch_size,
            )  # fmt: skip
        return self._ptx.nll(self.policy)

    def culprits(self, rollout: Rollout, idx: torch.Tensor) -> str:
        """Which samples of a minibatch carry NaN/inf (in their scores, advantages or rewards)."""
        with torch.no_grad():
            logprobs, _, values = self.score_minibatch(rollout, idx, with_entropy=False)
        rows = non_finite_rows(logprobs, values, rollout.task_rewards[idx])
        if not rows:
            return f"in a minibatch of {len(idx)} samples, none of which has a non-finite score or reward"
        return "from " + describe_rows(rollout.samples, rollout.generations, [int(idx[r]) for r in rows])

    # --- after the update ------------------------------------------------------------------------

    def record(
        self,
        iteration: int,
        rollout: Rollout,
        rewards: torch.Tensor,
        kl: torch.Tensor,
        returns: torch.Tensor,
        stats: dict[str, float],
    ) -> dict[str, Any]:
        """The iteration's numbers over the global batch, and the β update (the same on every rank)."""
        dist, mask = self.dist, rollout.mask
        sample_rewards = dist.gather(rollout.sample_rewards)
        kl_per_seq = float(dist.gather(kl.sum(-1)).mean())
        kl_per_token = dist.token_mean(kl, mask)
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(kl_per_token if self.config.kl.per == "token" else kl_per_seq, len(sample_rewards))
        n_gen = int(dist.sum(mask.sum()))
        record: dict[str, Any] = {
            "iteration": iteration,
            "kind": "train",
            "reward/task": float(sample_rewards.mean()),
            "reward/task_std": float(sample_rewards.std()) if len(sample_rewards) > 1 else 0.0,
            "reward/penalised": float(dist.gather((rewards * mask).sum(-1)).mean()),
            "kl": kl_per_seq,
            "kl_per_token": kl_per_token,
            "kl_coef": kl_coef,
            "entropy": dist.token_mean(rollout.entropy, mask),
            "gen_len": float(dist.gather(rollout.gen_lengths.float()).mean()),
            "prompts_truncated": int(dist.sum(torch.tensor(rollout.extras.get("n_truncated", 0)))),
            **stats,
        }
        if rollout.values is not None:
            record["explained_var"] = explained_variance(
                rollout.values, returns, mask, dist.sum if dist.enabled else None
            )
        for phase, seconds in rollout.seconds.items():
            record[f"time/{phase}"] = seconds
            record[f"tokens_per_s/{phase}"] = n_gen / seconds if seconds > 0 else float("nan")
        return record

    def after_step(self, iteration: int) -> dict[str, Any]:
        return self.rm_refresh.after_iteration(iteration) if self.rm_refresh is not None else {}

    def check_kl(self, iteration: int, rollout: Rollout, kl: torch.Tensor) -> None:
        """Stop when the mean KL per generated token passes ``guards.max_kl``; the weights that produced
        it came out of the previous iteration's update, so the good state is the one before that."""
        bound = self.config.guards.max_kl
        if bound is None:
            return
        per_token = self.dist.token_mean(kl, rollout.mask)  # the global batch's: all ranks stop together
        if math.isfinite(per_token) and per_token <= bound:
            return
        per_sample = (kl.sum(-1) / rollout.mask.sum(-1).clamp(min=1)).nan_to_num(float("inf"))
        worst = int(per_sample.argmax())
        good = self.rollback.before_previous_update()
        self.fail(
            iteration,
            f"the KL to the reference is {per_token:.3g} nats per token, past guards.max_kl={bound}; the largest is "
            f"{float(per_sample[worst]):.3g} for {describe_sample(rollout.samples[worst], rollout.generations[worst])}",
            good,
        )

    # --- checkpoints ------------------------------------------------------------------------------

    def trainer_state(self, iteration: int) -> dict[str, Any]:
        return {**super().trainer_state(iteration), "kl_ctl": self.kl_ctl.state_dict()}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    def status(self, record: dict[str, Any]) -> str:
        return (
            f"reward {record['reward/task']:+.3f}  kl {record['kl']:5.2f}  β {record['kl_coef']:.3f}  "
            f"len {record['gen_len']:4.1f}"
        )

    def status_legend(self) -> str:
        return "task reward, KL (nats/seq), β, tokens"


def micro_batch_order(rollout: Rollout, idx: torch.Tensor) -> torch.Tensor:
    """A minibatch's samples ordered by prompt length, then by index, before it is cut into micro-batches: the
    completions of one prompt (consecutive samples) stay together, so a packed pass runs their prompt once
    (models/packing.py), and prompts of like length share a micro-batch, so less of it is padding. The sum of
    the micro-batches' gradients is the minibatch's whatever the order."""
    by_index = idx.sort().values
    lengths = rollout.batch.prompt_mask[by_index].sum(-1).to(by_index.device)  # the indices stay on the CPU
    return by_index[lengths.argsort(stable=True)]


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
