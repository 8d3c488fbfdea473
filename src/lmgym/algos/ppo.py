"""PPO (Schulman et al., 2017) on the token-level MDP with a KL-penalised reward.

Per minibatch of generated tokens (masked means over tokens):

    ratio      = exp(log πθ(a|s) − log π_old(a|s))
    L_clip     = E[ max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)) ]
    L_value    = ½·E[ max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²) ]
    loss       = L_clip + vf_coef·L_value − ent_coef·H[πθ]
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.onpolicy import OnPolicyTrainer
from lmgym.algos.rollout import Rollout
from lmgym.guards import TrainingError, describe_rows, non_finite_rows
from lmgym.models.policy import checkpointed_blocks


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": approx_kl(logprobs, old_logprobs, mask),
        }
    return loss, stats


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(π_old ‖ πθ) over the unmasked tokens (a diagnostic: no gradient)."""
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        return masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask)


def entropy_of(entropy: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy over the unmasked tokens; 0 when it was not computed (ent_coef = 0)."""
    return masked_mean(entropy, mask) if entropy is not None else torch.zeros(())


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> torch.Tensor:
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


@dataclass(frozen=True)
class PolicyTerms:
    """What a policy loss sees for one minibatch: the samples ``idx`` of ``rollout``, and [b, G] tensors
    restricted to them (current and old log-probs of the taken tokens, advantages, the float token mask)."""

    rollout: Rollout
    idx: torch.Tensor
    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


class PPOTrainer(OnPolicyTrainer):
    def score_minibatch(
        self, rollout: Rollout, idx: torch.Tensor, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """log πθ(a_t|s_t), H[πθ] (or None) and V(s_t) (or None), all [b, G], for the samples ``idx``."""
        scores = self.policy.score(rollout.batch.index(idx), self.temperature, with_entropy=with_entropy)
        return scores.logprobs, scores.entropy, scores.values

    def old_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """log π_old(a_t|s_t) [B, G]: the distribution the rollout was sampled from."""
        return rollout.logprobs

    def policy_loss(self, m: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy term of one minibatch; variants (A2C, GRPO, ...) override this."""
        return ppo_policy_loss(m.logprobs, m.old_logprobs, m.advantages, m.mask, self.algo_config.clip_range)

    def culprits(self, rollout: Rollout, idx: torch.Tensor) -> str:
        """Which samples of a minibatch carry NaN/inf (in their scores, advantages or rewards)."""
        with torch.no_grad():
            logprobs, _, values = self.score_minibatch(rollout, idx, with_entropy=False)
        rows = non_finite_rows(logprobs, values, rollout.task_rewards[idx])
        if not rows:
            return f"in a minibatch of {len(idx)} samples, none of which has a non-finite score or reward"
        picked = [int(idx[r]) for r in rows]
        return "from " + describe_rows(rollout.samples, rollout.generations, picked)

    def minibatch_loss(
        self,
        rollout: Rollout,
        idx: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        old_logprobs: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """policy loss + vf_coef · value loss (when there is a critic) − ent_coef · entropy, and the parts."""
        cfg = self.algo_config
        mask = rollout.mask[idx].float()
        logprobs, entropy, values = self.score_minibatch(rollout, idx, with_entropy=cfg.ent_coef != 0)
        loss, stats = self.policy_loss(PolicyTerms(rollout, idx, logprobs, old_logprobs[idx], advantages[idx], mask))
        stats["loss/policy"] = loss
        if values is not None:
            clip = getattr(cfg, "value_clip", None)
            stats["loss/value"] = value_loss(values, rollout.values[idx], returns[idx], mask, clip)
            loss = loss + cfg.vf_coef * stats["loss/value"]
        if getattr(cfg, "ptx_coef", 0.0) > 0:  # PPO-ptx: maximise γ·log-likelihood of supervised data too
            stats["loss/ptx"] = self.ptx_nll()
            loss = loss + cfg.ptx_coef * stats["loss/ptx"]
        return loss - cfg.ent_coef * entropy_of(entropy, mask), stats

    def ptx_nll(self) -> torch.Tensor:
        """Mean token NLL of a batch of ``ppo.ptx_data`` (InstructGPT's pretraining mix; lmgym.algos.sft)."""
        if getattr(self, "_ptx", None) is None:
            from lmgym.algos.sft import PretrainingMix

            cfg = self.algo_config
            self._ptx = PretrainingMix(
                cfg.ptx_data, self.train_samples, self.tokenizer, self.config.model.max_prompt_tokens,
                self.max_new_tokens, cfg.ptx_batch_size,
            )  # fmt: skip
        return self._ptx.nll(self.policy)

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """``epochs`` passes of minibatch gradient steps on `minibatch_loss`. With ``target_kl``, the update
        stops at the first minibatch whose approximate KL (of the global minibatch, measured before its step)
        passes 1.5 × ``target_kl``; that minibatch takes no step (stable-baselines3, RL4LMs). The statistics
        are token-weighted means over the minibatches evaluated, ``update_steps`` counts optimizer steps."""
        cfg = self.algo_config
        old_logprobs = self.old_logprobs(rollout)
        target_kl = getattr(cfg, "target_kl", None)
        sums: dict[str, float] = defaultdict(float)
        evaluated = steps = 0
        stopped: tuple[int, int] | None = None
        for epoch in range(1, getattr(cfg, "epochs", 1) + 1):
            for number, idx in enumerate(self.minibatches(len(rollout.samples), cfg.minibatch_size, epoch), start=1):
                self.optimizer.zero_grad(set_to_none=True)
                stats = self.backward_minibatch(rollout, idx, advantages, returns, old_logprobs)
                evaluated += 1
                for key, value in stats.items():
                    sums[key] += value
                if target_kl is not None and self.dist.mean_float(stats["approx_kl"]) > 1.5 * target_kl:
                    stopped = (epoch, number)
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                # Several processes: the mean gradient of all ranks' minibatches, identical on every rank.
                self.dist.average_gradients(p for p in self.policy.parameters() if p.requires_grad)
                self.dist.unscale(self.optimizer)
                grad_norm = float(self.clip_gradients(cfg.max_grad_norm))
                # With fp16 an overflow is expected now and then: the loss scaler skips that step.
                if self.dist.scaler is None and not math.isfinite(grad_norm):
                    raise TrainingError(f"the gradient norm is {grad_norm} {self.culprits(rollout, idx)}")
                self.dist.step(self.optimizer)
                sums["grad_norm"] += grad_norm  # the same on every rank
                steps += 1
            if stopped is not None:
                break
        # Every rank's sums hold its token-weighted share (weights average to 1 over the ranks).
        means = self.dist.mean_floats(sums)
        out = {k: v / (evaluated if k != "grad_norm" else max(steps, 1)) for k, v in means.items()}
        out["update_steps"] = float(steps)
        if target_kl is not None:
            out["early_stop"] = float(stopped is not None)
            out["early_stop_epoch"], out["early_stop_minibatch"] = map(float, stopped or (0, 0))
        return out

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

        Each loss is a mean over its own tokens; it is weighted by its share of the tokens of the whole
        minibatch, on every rank, so that the summed (and then rank-averaged) gradient is the token mean of the
        global minibatch even when completions end early and the tokens fall unevenly. With one micro-batch in
        one process the weight is exactly 1. A process may hold fewer samples of a minibatch than there are
        micro-batches, or none: an empty micro-batch then runs one sample with weight 0, so that every
        process makes the same collective calls (FSDP's forward and backward passes are collective)."""
        micros = idx.tensor_split(self.config.accelerate.grad_accumulation_steps)
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

    def clip_gradients(self, max_norm: float | None) -> torch.Tensor:
        return self.dist.clip_grad_norm(self.policy.parameters(), max_norm)
