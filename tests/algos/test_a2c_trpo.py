"""A2C and TRPO: the conjugate-gradient solver, the Fisher-vector product against an explicit Fisher,
TRPO's trust region, A2C's one pass, and both learning the toy task."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch.distributions import Categorical, kl_divergence

from lmgym.algos.a2c import A2CTrainer
from lmgym.algos.losses import policy_gradient_loss
from lmgym.algos.trpo import TRPOTrainer, conjugate_gradient, fisher_subsample
from lmgym.api import train
from lmgym.config import load_config
from lmgym.models.policy import forward_generated


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def config(run_dir: Path, name: str, *extra: str):
    return load_config(
        overrides=[
            "task=toy",
            "model=tiny",
            "threads=1",
            f"run_dir={run_dir}",
            f"name={name}",
            "kl.controller=fixed",
            "kl.coef=0",
            *extra,
        ]
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# --- (a) conjugate gradient ---------------------------------------------------------------------------------


def test_conjugate_gradient_solves_spd_system() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    a = q @ q.T + 0.5 * torch.eye(8, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(8, generator=gen, dtype=torch.float64)
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ v

    x = conjugate_gradient(matvec, b, iters=20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), atol=1e-8, rtol=1e-8)
    assert len(calls) <= 9  # exact in n = 8 steps (up to rounding), then the residual test stops it
    # Fewer iterations: an approximation that still reduces the residual.
    x3 = conjugate_gradient(lambda v: a @ v, b, iters=3)
    assert (a @ x3 - b).norm() < b.norm()
    # b = 0 (e.g. all advantages zero): x = 0, not 0/0.
    assert torch.equal(conjugate_gradient(lambda v: a @ v, torch.zeros(8, dtype=torch.float64), 5), torch.zeros(8))


# --- (b) Fisher-vector product ------------------------------------------------------------------------------


def test_fisher_subsample_is_evenly_spaced_and_never_empty() -> None:
    assert fisher_subsample(32, 0.25).tolist() == [0, 4, 9, 13, 18, 22, 27, 31]
    assert fisher_subsample(32, 1.0).tolist() == list(range(32))
    assert fisher_subsample(3, 0.01).tolist() == [0]
    assert fisher_subsample(1, 0.5).tolist() == [0]


def test_fisher_vector_product_matches_explicit_fisher(tmp_path: Path) -> None:
    """On the tiny Llama with only the final RMSNorm gain γ trainable, the logits are z_t = W (γ ⊙ ĥ_t) / T,
    so J_t = ∂z_t/∂γ = W·diag(ĥ_t)/T and the Fisher of the token distributions (= the Hessian of the KL at
    θ_old) is F = mean_t J_tᵀ (diag(p_t) − p_t p_tᵀ) J_t, built here explicitly."""
    cfg = config(tmp_path, "fvp", "algo=trpo", "generation.temperature=0.7", "trpo.cg_damping=0.001")
    trainer = TRPOTrainer(cfg, console=quiet())
    model = trainer.policy.model
    model.requires_grad_(False)
    gain = model.model.norm.weight
    gain.requires_grad_(True)
    with torch.no_grad():
        # A non-trivial γ (so ĥ_t = u_t / γ is tested too), and larger logits than the initialisation's
        # (std 0.02 weights give a nearly uniform policy whose Fisher is ~1e-4, negligible beside the damping).
        gain.mul_(1 + 0.3 * torch.randn(gain.shape, generator=torch.Generator().manual_seed(1)).to(gain.device))
        model.get_output_embeddings().weight.mul_(5.0)
    assert trainer.policy_params() == [gain]

    torch.manual_seed(0)
    rollout = trainer.rollout(trainer.train_samples[:5])
    mask = rollout.mask.float()
    with torch.no_grad():
        logits, head_in = forward_generated(model, False, rollout.batch)  # head_in = γ ⊙ ĥ, [B, G, H]
        T = 0.7
        p = torch.softmax(logits.float() / T, dim=-1)  # [B, G, V]
        W = model.get_output_embeddings().weight  # [V, H]
        J = W[None, None] * (head_in / gain)[:, :, None, :] / T  # [B, G, V, H]
        M = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # [B, G, V, V]
        per_token = J.transpose(-1, -2) @ M @ J  # [B, G, H, H]
        fisher = (per_token * mask[..., None, None]).sum((0, 1)) / mask.sum()

    v = torch.randn(gain.numel(), generator=torch.Generator().manual_seed(2)).to(gain.device)
    expected = fisher @ v + 0.001 * v
    assert (fisher @ v).norm() > 3 * (0.001 * v).norm()  # the Fisher part is not negligible beside the damping
    for chunk in (32, 2):  # one chunk (cached graph) and several chunks (accumulated)
        trainer.config.trpo.minibatch_size = chunk
        got = trainer.make_fisher_vector_product(rollout.batch, rollout.mask)(v)
        torch.testing.assert_close(got, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)
        if chunk == 32:  # the cached graph serves several products
            fvp = trainer.make_fisher_vector_product(rollout.batch, rollout.mask)
            torch.testing.assert_close(fvp(2 * v), 2 * fvp(v), atol=1e-6, rtol=1e-5)


# --- (c) TRPO's trust region ---------------------------------------------------------------------------------


class KLProbe(TRPOTrainer):
    """Measures KL(π_old ‖ π_new) of each update independently of the trainer, and records every KL the
    line search tried."""

    def measure(self, *args):
        surrogate, kl = super().measure(*args)
        self.tried.append(kl)
        return surrogate, kl

    def update(self, rollout, advantages, returns):
        self.tried: list[float] = []
        with torch.no_grad():
            old = Categorical(logits=self.policy.score(rollout.batch, self.temperature, keep_logits=True).logits)
        stats = super().update(rollout, advantages, returns)
        with torch.no_grad():
            new = Categorical(logits=self.policy.score(rollout.batch, self.temperature, keep_logits=True).logits)
        kl = kl_divergence(old, new)  # [B, G]
        mask = rollout.mask.float()
        stats["probe/kl"] = float((kl * mask).sum() / mask.sum())
        stats["probe/first_try_kl"] = self.tried[0] if self.tried else 0.0
        return stats


def test_trpo_update_stays_in_trust_region(tmp_path: Path) -> None:
    # Little damping and per-token rewards: the quadratic model underestimates the KL of the full step,
    # so the line search has work to do (measured: full steps of KL 0.91, 0.16, 0.11 at δ = 0.1).
    max_kl = 0.1
    cfg = config(
        tmp_path,
        "kl",
        "algo=trpo",
        "model.freeze_embeddings=false",
        "task_args.per_token=true",
        "iterations=8",
        "rollout.batch_size=16",
        "trpo.minibatch_size=16",
        f"trpo.max_kl={max_kl}",
        "trpo.cg_damping=0.001",
        "eval.num_prompts=4",
        "eval.batch_size=4",
    )
    result = KLProbe(cfg, console=quiet()).train()
    history = result.history
    logged = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["trpo/step_kl"] for r in logged] == [r["trpo/step_kl"] for r in history]
    accepted = [r for r in history if r["trpo/accepted"] == 1.0]
    assert len(accepted) >= 5, [r["trpo/accepted"] for r in history]
    for r in history:
        assert r["probe/kl"] <= 1.5 * max_kl, r
        if r["trpo/accepted"]:
            assert r["trpo/step_kl"] == pytest.approx(r["probe/kl"], abs=1e-4, rel=1e-3)
            assert r["trpo/surrogate_gain"] > 0
        else:
            assert r["probe/kl"] == pytest.approx(0.0, abs=1e-6)  # rejected: the old parameters are restored
    # The constraint was active: some full step overshot 1.5·δ and was cut back by the line search.
    assert max(r["probe/first_try_kl"] for r in history) > 1.5 * max_kl
    assert any(r["trpo/backtracks"] >= 1 and r["trpo/accepted"] for r in history)
    assert max(r["probe/kl"] for r in history) > 0.2 * max_kl  # and the steps were not vanishingly small


# --- (d) learning the toy task -------------------------------------------------------------------------------

# Eval reward ("the" share, 32 held-out prompts) before → after, measured on the causal tiny model:
#   A2C, 20 iterations, lr 1e-2, one step per iteration: seeds 0-5 → 1.00, 0.90, 0.96, 1.00, 0.99, 1.00 (from 0.003).
#   TRPO, 15 iterations, δ = 0.1, damping 1.0, 5 CG steps, per-token reward: seeds 0-4 → 0.97, 0.97, 0.63, 0.94, 0.87.
# TRPO with the default damping 0.1 learned more slowly (δ = 0.1: 0.42 / 0.63 after 20 iterations, seeds 0 / 1):
# with 32 samples the low-damped Fisher solve fits the batch's noise.
LEARN = ["model.freeze_embeddings=false", "rollout.batch_size=32", "eval.num_prompts=32"]


@pytest.mark.parametrize(
    ("algo", "extra", "margin"),
    [
        pytest.param("a2c", ["iterations=20", "a2c.lr=1e-2"], 0.4, id="a2c"),
        pytest.param(
            "trpo",
            [
                "iterations=15",
                "task_args.per_token=true",
                "trpo.max_kl=0.1",
                "trpo.cg_damping=1.0",
                "trpo.cg_iters=5",
                "trpo.minibatch_size=32",
            ],
            0.3,
            id="trpo",
        ),
    ],
)
def test_learns_toy_task(tmp_path: Path, algo: str, extra: list[str], margin: float) -> None:
    overrides = [
        "task=toy",
        "model=tiny",
        "threads=1",
        f"run_dir={tmp_path}",
        "name=learn",
        "kl.controller=fixed",
        "kl.coef=0",
        f"algo={algo}",
        *LEARN,
        *extra,
    ]
    result = train(None, overrides, console=quiet())
    before, after = result.before["reward"], result.after["reward"]
    assert before < 0.05
    assert after > before + margin, f"{algo}: held-out reward {before:.3f} -> {after:.3f}"
    rewards = [r["reward/task"] for r in result.history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    assert (result.run_dir / "checkpoints" / f"step-{len(rewards)}" / "policy.safetensors").exists()


# --- (e) A2C: one pass, one optimizer step per minibatch ---------------------------------------------------------


def test_a2c_policy_loss_is_minus_advantage_weighted_logprob() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -9.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss = policy_gradient_loss(logprobs, advantages, mask)
    assert float(loss.detach()) == pytest.approx(-(-1.0 + 4.0 - 1.5 - 1.5 + 0.0) / 5)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, -advantages * mask / 5)


def test_a2c_one_optimizer_step_per_minibatch(tmp_path: Path) -> None:
    cfg = config(tmp_path, "a2c", "algo=a2c", "rollout.batch_size=10", "a2c.minibatch_size=4")

    def dense(prompts, generations, references, meta) -> list[float]:  # toy's reward is 0 for most samples
        return [sum(t % 7 for t in m["gen_token_ids"]) / (7 * max(len(m["gen_token_ids"]), 1)) for m in meta]

    trainer = A2CTrainer(cfg, console=quiet(), reward=dense)
    steps, scored = [], []
    step, score = trainer.optimizer.step, trainer.policy.score

    def counting_step(*args, **kwargs):
        steps.append(len(scored))
        return step(*args, **kwargs)

    def recording_score(batch, *args, **kwargs):
        if torch.is_grad_enabled():
            scored.append(batch.gen_ids.shape[0])
        return score(batch, *args, **kwargs)

    trainer.optimizer.step = counting_step
    trainer.policy.score = recording_score
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    record = trainer.step(1)
    assert scored == [4, 4, 2]  # one epoch: every sample once, in minibatches of 4
    assert steps == [1, 2, 3]  # one optimizer step after each minibatch's loss
    assert record["update_steps"] == 3.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters(), strict=True))


# --- TRPO checkpoints and exact resume ----------------------------------------------------------------------------


def test_trpo_resume_is_exact(tmp_path: Path) -> None:
    small = [
        "algo=trpo",
        "rollout.batch_size=6",
        "trpo.minibatch_size=4",
        "trpo.max_kl=0.05",
        "eval.num_prompts=4",
        "eval.batch_size=4",
        "checkpoint.every=2",
        "task_args.per_token=true",
        "model.freeze_embeddings=false",
        "trpo.cg_iters=3",
    ]
    full = TRPOTrainer(config(tmp_path, "full", "iterations=4", *small), console=quiet()).train()
    TRPOTrainer(config(tmp_path, "half", "iterations=2", *small), console=quiet()).train()
    resumed = TRPOTrainer(config(tmp_path, "half", "iterations=4", *small), console=quiet(), resume=True).train()
    assert [r["iteration"] for r in resumed.history] == [3, 4]

    def records(run: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s/"))}
            for r in read_jsonl(run / "metrics.jsonl")
            if r["kind"] == "train"
        ]

    assert records(resumed.run_dir) == records(full.run_dir)
    assert any(r["trpo/accepted"] for r in records(full.run_dir))
    a = load_file(str(full.run_dir / "checkpoints" / "step-4" / "policy.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "step-4" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt = load_file(str(full.run_dir / "checkpoints" / "step-4" / "optimizer.safetensors"))
    assert opt and all(v.numel() <= 65 for v in opt.values())  # only the value head's Adam state (64 + 1)


@pytest.mark.parametrize("value_head", ["shared", "separate"])
def test_trpo_value_regression_leaves_the_policy_alone(tmp_path: Path, value_head: str) -> None:
    cfg = config(
        tmp_path,
        "vf",
        "algo=trpo",
        "rollout.batch_size=6",
        f"model.value_head={value_head}",
        "trpo.minibatch_size=4",
        "trpo.value_head_lr=1e-2",
        "trpo.lr=1e-3",
    )
    trainer = TRPOTrainer(cfg, console=quiet())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in trainer.policy.model.parameters())
    assert {id(p) for p in trainer.policy.value_head.parameters()} <= optimized
    critic = list(trainer.policy.critic.parameters()) if trainer.policy.critic is not None else []
    assert (value_head == "separate") == bool(critic) and {id(p) for p in critic} <= optimized

    torch.manual_seed(0)
    rollout = trainer.rollout(trainer.train_samples[:6])
    returns = torch.ones_like(rollout.logprobs) * rollout.mask  # a target the zero-initialised critic misses
    lm = [p.detach().clone() for p in trainer.policy.model.parameters()]
    head, crit = ([p.detach().clone() for p in m] for m in (trainer.policy.value_head.parameters(), critic))
    first = trainer.regress_values(rollout, returns)
    assert all(torch.equal(a, b) for a, b in zip(lm, trainer.policy.model.parameters(), strict=True))
    assert all(p.grad is None for p in trainer.policy.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(head, trainer.policy.value_head.parameters(), strict=True))
    if critic:
        assert any(not torch.equal(a, b) for a, b in zip(crit, critic, strict=True))
    assert trainer.regress_values(rollout, returns) < first  # the regression fits
