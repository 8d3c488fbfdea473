"""PPO options that no other test switches on: early stop on the approximate KL, the entropy bonus's sign,
gradient clipping against the measured norm, advantages without whitening, explained variance, and the
KL penalty (its sign by hand, and that β > 0 keeps the policy measurably closer to the reference)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.algos.advantages import gae, masked_mean
from lmgym.algos.onpolicy import OnPolicyTrainer, explained_variance
from lmgym.api import train
from lmgym.config import ConfigError, CriticConfig, load_config
from lmgym.rewards.kl import FixedKL


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def token_reward(prompts, generations, references, meta) -> list[float]:
    """Mean (token id mod 7) / 7: a dense signal the random tiny model gets from its first samples."""
    return [sum(t % 7 for t in m["gen_token_ids"]) / (7 * max(len(m["gen_token_ids"]), 1)) for m in meta]


def make(tmp_path: Path, name: str, *extra: str, reward=token_reward):
    config = load_config(None, [
        "task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", f"name={name}", "rollout.batch_size=16",
        "ppo.minibatch_size=4", "ppo.lr=1e-2", "kl.controller=fixed", "kl.coef=0", "eval.num_prompts=2", *extra,
    ])  # fmt: skip
    return get_trainer("ppo")(config, console=quiet(), reward=reward)


def test_early_stop_at_the_first_minibatch_past_the_kl_bound(tmp_path: Path) -> None:
    """target_kl: the first minibatch sees the rollout's own policy (approximate KL ~0) and takes its step; the
    second already sees a policy that moved, past 1.5 × 1e-5, so the update stops there without stepping. The
    old per-epoch check would have taken all four steps of the epoch first."""
    trainer = make(tmp_path, "stop", "ppo.epochs=4", "ppo.target_kl=1e-5")
    record = trainer.step(1)
    assert record["early_stop"] == 1.0
    assert (record["early_stop_epoch"], record["early_stop_minibatch"]) == (1.0, 2.0)
    assert record["update_steps"] == 1.0
    no_bound = make(tmp_path, "no-stop", "ppo.epochs=4").step(1)
    assert no_bound["update_steps"] == 16.0 and "early_stop" not in no_bound


def test_entropy_bonus_raises_the_entropy(tmp_path: Path) -> None:
    """With a constant reward every advantage is 0 (and the critic starts exact at 0), so the only gradient is
    the bonus: −ent_coef·H in the loss must make the policy more uniform, not less."""

    def zero(prompts, generations, references, meta) -> list[float]:
        return [0.0] * len(generations)

    trainer = make(tmp_path, "entropy", "ppo.ent_coef=0.5", "ppo.epochs=2", "ppo.max_grad_norm=null", reward=zero)
    rollout = trainer.rollout(trainer.train_samples[:16])
    before = float(masked_mean(trainer.policy.score(rollout.batch).entropy, rollout.mask))
    trainer.iteration = 1
    rewards, _ = trainer.kl_penalised_rewards(rollout)
    advantages, returns = trainer.advantages(rollout, rewards)
    assert float(advantages.abs().max()) == 0.0
    trainer.update(rollout, advantages, returns)
    after = float(masked_mean(trainer.policy.score(rollout.batch).entropy, rollout.mask))
    assert after > before + 1e-3, (before, after)


def test_gradients_are_clipped_to_max_grad_norm_and_the_norm_before_is_logged(tmp_path: Path) -> None:
    for bound in (1e-3, None):
        trainer = make(tmp_path, f"clip-{bound}", f"ppo.max_grad_norm={'null' if bound is None else bound}",
                       "ppo.minibatch_size=16", "ppo.epochs=1")  # fmt: skip
        at_step: list[float] = []
        step = trainer.optimizer.step

        def recording_step(*args, step=step, trainer=trainer, at_step=at_step):
            grads = [p.grad for p in trainer.policy.parameters() if p.grad is not None]
            at_step.append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
            return step(*args)

        trainer.optimizer.step = recording_step
        record = trainer.step(1)
        assert len(at_step) == 1
        if bound is None:
            assert at_step[0] == pytest.approx(record["grad_norm"], rel=1e-5)
        else:
            assert record["grad_norm"] > 10 * bound  # the measured norm, before clipping
            assert at_step[0] == pytest.approx(bound, rel=1e-4)  # what the optimizer saw


def test_advantages_are_whitened_only_when_asked() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rollout = SimpleNamespace(values=values, mask=mask)
    raw, returns = gae(rewards, values, mask, 0.9, 0.8)
    for whiten in (False, True):
        trainer = SimpleNamespace(
            algo_config=CriticConfig(gamma=0.9, lam=0.8, whiten_advantages=whiten), dist=SimpleNamespace(enabled=False)
        )
        advantages, ret = OnPolicyTrainer.advantages(trainer, rollout, rewards)
        torch.testing.assert_close(ret, returns)
        if not whiten:
            torch.testing.assert_close(advantages, raw)
        else:
            n = mask.sum()
            mean = (raw * mask).sum() / n
            std = (((raw - mean) ** 2 * mask).sum() / n).sqrt()
            torch.testing.assert_close(advantages, (raw - mean) / std * mask, atol=1e-5, rtol=0)


def test_explained_variance_by_hand() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 9.0]])
    values = torch.tensor([[1.5, 2.0, 2.0], [3.0, 1.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 9 and −7 are past the end
    # R = 1, 2, 3, 4, 0: mean 2, Var 2.  R − V = −0.5, 0, 1, 1, −1: mean 0.1, Var (0.36+0.01+0.81+0.81+1.21)/5 = 0.64
    assert explained_variance(values, returns, mask) == pytest.approx(1 - 0.64 / 2.0, abs=1e-6)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask))  # no variance to explain


def test_kl_penalty_subtracts_beta_times_the_log_ratio() -> None:
    rollout = SimpleNamespace(
        task_rewards=torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]),
        logprobs=torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -9.0]]),
        ref_logprobs=torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -1.0, 0.0]]),
        mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
    )
    trainer = SimpleNamespace(kl_ctl=FixedKL(0.5))
    rewards, kl = OnPolicyTrainer.kl_penalised_rewards(trainer, rollout)
    # log πθ − log π0 = 0.5, −1, 0 | 0, −2, (masked); R̂ = R − 0.5·that
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [0.0, -2.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 0.5, 1.0], [0.0, 3.0, 0.0]]))


def test_a_kl_penalty_keeps_the_policy_closer_to_the_reference(tmp_path: Path) -> None:
    """The same PPO run on the toy task with β = 0 and β = 0.5 (fixed): the penalised one ends measurably
    closer to the reference (its sampled KL per completion), even though it may learn the task more slowly."""
    common = ["task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", "rollout.batch_size=32", "ppo.lr=1e-2",
              "kl.controller=fixed", "iterations=8", "eval.num_prompts=4"]  # fmt: skip
    kl = {}
    for beta in (0.0, 0.5):
        result = train(None, [*common, f"name=beta-{beta}", f"kl.coef={beta}"], console=quiet())
        kl[beta] = sum(r["kl"] for r in result.history[-3:]) / 3
    assert kl[0.0] > 1.0, kl  # without a penalty the policy runs away from the reference
    assert kl[0.5] < 0.5 * kl[0.0], kl


def test_k_completions_per_prompt_share_a_packed_pass_with_the_same_update(tmp_path: Path, monkeypatch) -> None:
    """ppo.k=4: each iteration draws batch/4 prompts, 4 consecutive completions each, and the values, the
    log-probs and the gradient through the packed passes (one prompt per group) equal those of one row per
    completion, to float rounding."""

    def one_iteration(name: str) -> tuple[list, dict[str, torch.Tensor], dict[str, float]]:
        trainer = make(tmp_path, name, "ppo.k=4", "ppo.epochs=1", "ppo.minibatch_size=16", "kl.coef=0.1")
        drawn, grads = [], {}
        rollout, optimizer_step = trainer.rollout, trainer.optimizer_step

        def keep_grads(*args):
            grads.update({n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None})
            return optimizer_step(*args)

        trainer.rollout = lambda samples: drawn.extend(samples) or rollout(samples)
        trainer.optimizer_step = keep_grads
        return drawn, grads, trainer.step(1)

    drawn, grads, record = one_iteration("packed")
    prompts = [s.prompt for s in drawn]
    assert len(prompts) == 16 and len(set(prompts)) == 4
    assert all(prompts[i] == prompts[i - i % 4] for i in range(16))
    monkeypatch.setattr("lmgym.models.policy.can_pack", lambda *args: False)
    _, unpacked_grads, unpacked = one_iteration("unpacked")
    assert record["reward/task"] == unpacked["reward/task"]  # the same samples
    assert grads.keys() == unpacked_grads.keys() and "value_head.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, unpacked_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3


def test_batch_size_must_be_a_multiple_of_k(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"multiple of ppo\.k \(3\)"):
        make(tmp_path, "bad-k", "ppo.k=3")
