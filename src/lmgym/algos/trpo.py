"""TRPO, trust region policy optimization (Schulman et al., 2015), on the token-level MDP.

One update, top to bottom (E and KL̄ are masked means over all generated tokens of the rollout):

1. surrogate    L(θ) = E[ ratio·A ] (+ ent_coef·E[H]),  ratio = πθ(a|s) / π_old(a|s);  g = ∇θ L(θ_old)
2. Fisher       F·v = ∇θ( ∇θ KL̄(π_old ‖ πθ) · v ) at θ = θ_old, by double backprop, where
                KL̄ = E_tokens[ Σ_vocab π_old · (log π_old − log πθ) ] over the full vocabulary
                (at θ_old the Hessian of this KL is exactly the Fisher information of the token distributions),
                estimated on an evenly spaced `fisher_fraction` of the rollout's samples: the Fisher is an
                average, a quarter of the samples estimates it well, and the products are most of the cost
3. direction    x ≈ (F + λI)⁻¹ g: `cg_iters` conjugate-gradient steps, λ = `cg_damping`
4. step size    β = sqrt(2δ / xᵀ(F + λI)x), δ = `max_kl`: the quadratic model of KL̄ at θ_old + βx equals δ
5. line search  θ = θ_old + cⁱ·β·x for i = 0 … `backtrack_iters`−1, c = `backtrack_coef`: accept the first
                step that raises L and whose KL̄, measured with a forward pass, is ≤ δ; if none, keep θ_old
6. critic       `value_epochs` epochs of minibatch Adam steps on ½E[(V − R)²] alone. With
                model.value_head="shared" only the value head regresses, on hidden states computed once
                after step 5: the trunk is the policy and moves only in step 5. With "separate" the critic
                network trains too (at `lr`; the head at `value_head_lr`). `vf_coef` is unused: the value
                loss has its own optimizer, and Adam does not see the scale of a loss.

Only the language model's trainable parameters (requires_grad; the value head and a separate critic are
not part of the LM) take the natural-gradient step, as one flat vector.

Memory: the KL over [batch, gen_len, vocab] with a double backward is the heavy part (for a 49k vocabulary
~200 KB per generated token for the logits alone, several times that with the graph). Steps 1, 2 and 5 therefore
run over chunks of `minibatch_size` samples and accumulate token sums divided by the total token count, so every
quantity is the mean over all tokens whatever the chunking. When the Fisher's samples fit in one chunk, the graph
of ∇KL̄ is built once and reused by all cg_iters + 1 Fisher-vector products; with several chunks each product
redoes one forward and one backward per chunk before its double backward (more compute, bounded memory). The old
log-probabilities over the vocabulary (one [B, G, V] float tensor) are kept for the line search's KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parameters_to_vector

from lmgym.algos.losses import value_loss
from lmgym.algos.onpolicy import OnPolicyTrainer
from lmgym.algos.trainer import adamw
from lmgym.errors import InputError
from lmgym.models.policy import TokenBatch, forward_generated
from lmgym.rollout.rollout import Rollout


def flat_grad(
    output: torch.Tensor, params: list[torch.Tensor], create_graph: bool = False, retain_graph: bool | None = None
) -> torch.Tensor:
    """∂output/∂params as one flat vector (zeros for parameters the output does not depend on)."""
    grads = torch.autograd.grad(output, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
    return torch.cat([g.reshape(-1) for g in grads])


def set_flat_params(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Write a flat vector into the parameters, in place.

    `torch.nn.utils.vector_to_parameters` would rebind each ``param.data`` to a view of one shared
    vector; safetensors then refuses to checkpoint them ("None is covering the entire storage").
    """
    with torch.no_grad():
        for param, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
            param.copy_(chunk.view_as(param))


def categorical_kl(old_logp: torch.Tensor, new_logp: torch.Tensor) -> torch.Tensor:
    """KL(old ‖ new) of categorical distributions given as log-probabilities [..., V]; returns [...]."""
    return (old_logp.exp() * (old_logp - new_logp)).sum(-1)


def conjugate_gradient(
    matrix_vector_product: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive definite A, given only v ↦ A v."""
    x = torch.zeros_like(b)
    r = b.clone()  # residual b − A x
    p = b.clone()  # search direction
    r_dot_r = r @ r
    for _ in range(iters):
        if r_dot_r <= residual_tol:
            break
        Ap = matrix_vector_product(p)
        alpha = r_dot_r / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        new_r_dot_r = r @ r
        p = r + (new_r_dot_r / r_dot_r) * p
        r_dot_r = new_r_dot_r
    return x


def fisher_subsample(n: int, fraction: float) -> torch.Tensor:
    """Indices of ``ceil(fraction·n)`` of n samples, evenly spaced (so all prompts of a batch are represented)."""
    count = max(1, math.ceil(fraction * n))
    return torch.linspace(0, n - 1, count).round().long().unique()


class TRPOTrainer(OnPolicyTrainer):
    """With several processes (data parallel), every token sum — g, the Fisher-vector products, the measured
    surrogate and KL, the token counts they are divided by — is summed over ranks, so each rank solves the
    same system and takes the same step; the critic's gradients are averaged like PPO's."""

    supports_sharding = False  # the natural-gradient step works on whole, flattened policy gradients

    # --- setup: the optimizer holds only the critic; the policy moves by the natural-gradient step -----------

    def make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.algo_config
        if self.policy.value_head is None:
            raise InputError("TRPO needs a critic: set model.value_head to 'shared' or 'separate'")
        groups = [{"params": list(self.policy.value_head.parameters()), "lr": cfg.value_head_lr or cfg.lr}]
        if self.policy.critic is not None:
            groups.append({"params": [p for p in self.policy.critic.parameters() if p.requires_grad], "lr": cfg.lr})
        return adamw(groups, cfg.lr, cfg.weight_decay, self.fused_optimizer)

    def policy_params(self) -> list[torch.nn.Parameter]:
        """The LM's trainable parameters (the value head and a separate critic live outside ``policy.model``)."""
        return [p for p in self.policy.model.parameters() if p.requires_grad]

    def chunks(self, n: int) -> list[torch.Tensor]:
        return list(torch.arange(n).split(self.algo_config.minibatch_size))

    # --- the pieces of the policy step ----------------------------------------------------------------------

    def surrogate_sum(
        self, rollout: Rollout, advantages: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ over the chunk's tokens of ratio·A (+ ent_coef·H), and its log-probabilities [b, G, V]."""
        cfg = self.algo_config
        scores = self.policy.score(
            rollout.batch.index(idx),
            self.temperature,
            with_values=False,
            with_entropy=cfg.ent_coef != 0,
            keep_logits=True,
        )
        ratio = torch.exp(scores.logprobs - rollout.logprobs[idx])  # [b, G]
        terms = ratio * advantages[idx]
        if scores.entropy is not None:
            terms = terms + cfg.ent_coef * scores.entropy
        return (terms * rollout.mask[idx]).sum(), F.log_softmax(scores.logits, dim=-1)

    def make_fisher_vector_product(
        self, batch: TokenBatch, mask: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ (F + λI)·v, F the Hessian of KL̄(π_old ‖ πθ) at θ = θ_old (the current parameters).

        With one chunk, the first backward (∇KL̄ with its graph) is built once and every product
        backpropagates through it again (retain_graph). With several chunks, keeping every chunk's
        graph would cost the memory that chunking saves, so each product redoes the forward pass
        and first backward chunk by chunk.
        """
        params = self.policy_params()
        mask = mask.float()
        n_tokens = self.dist.sum(mask.sum()).clamp(min=1.0)  # all ranks' Fisher tokens
        chunks = self.chunks(len(mask))

        def grad_kl(idx: torch.Tensor) -> torch.Tensor:  # ∇θ of this chunk's share of KL̄, differentiable
            with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
                scores = self.policy.score(
                    batch.index(idx), self.temperature, with_values=False, with_entropy=False, keep_logits=True
                )
            logp = F.log_softmax(scores.logits, dim=-1)  # [b, G, V]
            kl = (categorical_kl(logp.detach(), logp) * mask[idx]).sum() / n_tokens  # 0, but not its derivatives
            return flat_grad(kl, params, create_graph=True)

        cached = grad_kl(chunks[0]) if len(chunks) == 1 else None

        def fisher_vector_product(v: torch.Tensor) -> torch.Tensor:
            if cached is not None:
                fv = flat_grad(cached @ v, params, retain_graph=True)
            else:
                fv = sum(flat_grad(grad_kl(idx) @ v, params) for idx in chunks)
            return self.dist.sum(fv) + self.algo_config.cg_damping * v

        return fisher_vector_product

    @torch.no_grad()
    def measure(self, rollout: Rollout, advantages: torch.Tensor, old_logp: list[torch.Tensor]) -> tuple[float, float]:
        """L(θ) and KL̄(π_old ‖ πθ) at the current parameters (one forward pass)."""
        n_tokens = self.dist.sum(rollout.mask.sum()).clamp(min=1)
        surrogate, kl = 0.0, 0.0
        for idx, old in zip(self.chunks(len(rollout.samples)), old_logp, strict=True):
            surr, logp = self.surrogate_sum(rollout, advantages, idx)
            surrogate += float(surr / n_tokens)
            kl += float((categorical_kl(old, logp) * rollout.mask[idx]).sum() / n_tokens)
        return self.dist.sum_float(surrogate), self.dist.sum_float(kl)

    # --- one update -----------------------------------------------------------------------------------------

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        stats = self.policy_step(rollout, advantages)
        stats["loss/value"] = self.regress_values(rollout, returns)
        return stats

    def policy_step(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        cfg = self.algo_config
        params = self.policy_params()
        n_tokens = self.dist.sum(rollout.mask.sum()).clamp(min=1)  # of the global batch

        # 1. The surrogate's gradient at θ_old, and π_old over the vocabulary for measuring KL later.
        g = torch.zeros(sum(p.numel() for p in params), device=self.policy.device)
        surrogate_old, old_logp = 0.0, []
        for idx in self.chunks(len(rollout.samples)):
            surr, logp = self.surrogate_sum(rollout, advantages, idx)
            g += flat_grad(surr / n_tokens, params)
            surrogate_old += float(surr.detach() / n_tokens)
            old_logp.append(logp.detach())
        g, surrogate_old = self.dist.sum(g), self.dist.sum_float(surrogate_old)

        # 2-4. Natural-gradient direction x ≈ F⁻¹g by conjugate gradient, scaled to the trust region.
        fisher_idx = fisher_subsample(len(rollout.samples), cfg.fisher_fraction)
        fvp = self.make_fisher_vector_product(rollout.batch.index(fisher_idx), rollout.mask[fisher_idx])
        x = conjugate_gradient(fvp, g, cfg.cg_iters)
        x_F_x = float(x @ fvp(x))
        stats = {
            "loss/policy": -surrogate_old,
            "grad_norm": float(g.norm()),
            "trpo/step_kl": 0.0,
            "trpo/backtracks": 0.0,
            "trpo/accepted": 0.0,
            "trpo/surrogate_gain": 0.0,
            "trpo/expected_gain": 0.0,
        }
        if not x_F_x > 0:  # g = 0 (e.g. all advantages zero): nothing to do
            return stats
        full_step = math.sqrt(2 * cfg.max_kl / x_F_x) * x
        stats["trpo/expected_gain"] = float(g @ full_step)

        # 5. Backtracking line search on the measured surrogate and KL.
        self.changing_state()  # the line search sets the parameters directly: the guards keep them first
        theta_old = parameters_to_vector(params).detach().clone()
        for backtracks in range(cfg.backtrack_iters):
            set_flat_params(params, theta_old + cfg.backtrack_coef**backtracks * full_step)
            surrogate, kl = self.measure(rollout, advantages, old_logp)
            if surrogate > surrogate_old and kl <= cfg.max_kl:
                stats.update(
                    {
                        "trpo/step_kl": kl,
                        "trpo/backtracks": float(backtracks),
                        "trpo/accepted": 1.0,
                        "trpo/surrogate_gain": surrogate - surrogate_old,
                    }
                )
                return stats
        set_flat_params(params, theta_old)  # no step was acceptable
        stats["trpo/backtracks"] = float(cfg.backtrack_iters)
        return stats

    # --- 6. the critic --------------------------------------------------------------------------------------

    def critic_features(self, rollout: Rollout) -> torch.Tensor | None:
        """With a shared trunk, the hidden states under the generated tokens [B, G, H], computed once; the trunk
        does not move during the regression. None with a separate critic, which must recompute them."""
        if self.policy.critic is not None:
            return None
        with torch.no_grad():
            hidden = [
                forward_generated(self.policy.model, self.policy.is_seq2seq, rollout.batch.index(idx))[1]
                for idx in self.chunks(len(rollout.samples))
            ]
        return torch.cat(hidden).float()

    def value_predictions(self, batch: TokenBatch, features: torch.Tensor | None) -> torch.Tensor:
        """V(s_t) [b, G]; gradients reach only the value head and a separate critic, never the policy."""
        if features is None:
            _, features = forward_generated(self.policy.critic, self.policy.is_seq2seq, batch)
        return self.policy.value_head(features.float()).squeeze(-1)

    def regress_values(self, rollout: Rollout, returns: torch.Tensor) -> float:
        cfg = self.algo_config
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        features = self.critic_features(rollout)
        total, steps = 0.0, 0
        for epoch in range(1, cfg.value_epochs + 1):
            for idx in self.minibatches(len(rollout.samples), cfg.minibatch_size, epoch):
                # Weighted by this process's share of the global minibatch's tokens (it may hold none of it).
                (weight,) = self.dist.loss_weights([float(rollout.mask[idx].sum())])
                if len(idx) == 0:
                    idx, weight = torch.zeros(1, dtype=torch.long), 0.0
                values = self.value_predictions(rollout.batch.index(idx), None if features is None else features[idx])
                loss = value_loss(values, rollout.values[idx], returns[idx], rollout.mask[idx].float(), cfg.value_clip)
                self.optimizer.zero_grad(set_to_none=True)
                (loss * weight).backward()
                self.dist.average_gradients(params)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                total += weight * float(loss.detach())
                steps += 1
        return self.dist.mean_float(total / steps)
