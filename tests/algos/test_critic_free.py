"""REINFORCE, RLOO and GRPO: advantages and the KL term by hand, no critic, prompt groups, learning, resume."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.algos.advantages import masked_mean
from lmgym.algos.critic_free import check_groups
from lmgym.algos.grpo import GRPOTrainer, grpo_advantages, k3_kl
from lmgym.algos.onpolicy import OnPolicyTrainer
from lmgym.algos.reinforce import ReinforceTrainer, returns_to_go, update_baseline
from lmgym.algos.rloo import RLOOTrainer, rloo_advantages
from lmgym.api import train
from lmgym.config import GRPOConfig, ReinforceConfig, RLOOConfig, load_config
from lmgym.data.sample import Sample
from lmgym.distributed import Distributed
from lmgym.rewards.kl import FixedKL

LN2 = math.log(2.0)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def overrides(run_dir: Path, name: str, *extra: str) -> list[str]:
    return ["task=toy", "model=tiny", "threads=1", f"run_dir={run_dir}", f"name={name}", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def train_records(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s/"))}
        for r in read_jsonl(run / "metrics.jsonl")
        if r["kind"] == "train"
    ]


def groups_of(k: int, n_prompts: int) -> list[Sample]:
    return [Sample(id=f"p{i}", prompt=f"prompt {i}") for i in range(n_prompts) for _ in range(k)]


# Two prompts × k=3 completions, 3 generated tokens each; the task reward sits on each one's last token.
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
TASK = torch.tensor(
    [[0, 0, 1.0], [2.0, 0, 0], [0, 6.0, 0], [0, 0, 0.0], [0, 3.0, 0], [0, 0, 3.0]]
)  # sequence rewards r = [1, 2, 6, 0, 3, 3]


def fake_rollout(log_ratio: torch.Tensor) -> SimpleNamespace:
    """What advantages() reads from a rollout; log πθ − log π0 = ``log_ratio`` (masked)."""
    logprobs = torch.full(MASK.shape, -1.0) * MASK
    return SimpleNamespace(
        samples=groups_of(3, 2),
        mask=MASK,
        task_rewards=TASK,
        logprobs=logprobs,
        ref_logprobs=(logprobs - log_ratio) * MASK,
    )


# --- (a) RLOO -------------------------------------------------------------------------------------


def test_rloo_leave_one_out_advantages_by_hand() -> None:
    returns = torch.tensor([1.0, 2.0, 6.0, 0.0, 3.0, 3.0])
    # prompt 1: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 → −3, −1.5, 4.5
    # prompt 2: baselines (3+3)/2 = 3, (0+3)/2 = 1.5, 1.5          → −3, 1.5, 1.5
    expected = torch.tensor([-3.0, -1.5, 4.5, -3.0, 1.5, 1.5])
    torch.testing.assert_close(rloo_advantages(returns, 3), expected, atol=1e-6, rtol=0)


def test_rloo_trainer_advantages_use_kl_penalised_sequence_returns() -> None:
    # KL per sequence: Σ_t (log πθ − log π0) = [2, 0, 0, 0, 0, 4]; β = 0.5 → returns r − β·KL = [0, 2, 6, 0, 3, 1]
    log_ratio = torch.tensor([[0.5, 1.0, 0.5], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [2.0, 1.0, 1.0]])
    rollout = fake_rollout(log_ratio)
    trainer = SimpleNamespace(algo_config=RLOOConfig(k=3), kl_ctl=FixedKL(0.5))
    rewards, _ = OnPolicyTrainer.kl_penalised_rewards(trainer, rollout)
    advantages, returns = RLOOTrainer.advantages(trainer, rollout, rewards)
    # prompt 1 [0, 2, 6]: 0 − 4 = −4, 2 − 3 = −1, 6 − 1 = 5;  prompt 2 [0, 3, 1]: 0 − 2, 3 − 0.5, 1 − 1.5
    expected = torch.tensor([-4.0, -1.0, 5.0, -2.0, 2.5, -0.5])
    torch.testing.assert_close(advantages, expected[:, None] * MASK, atol=1e-6, rtol=0)  # every token of y_i
    torch.testing.assert_close(returns[:, 0], torch.tensor([0.0, 2.0, 6.0, 0.0, 3.0, 1.0]), atol=1e-6, rtol=0)


def test_groups_must_hold_k_copies_of_one_prompt() -> None:
    check_groups(groups_of(3, 2), 3)
    shuffled = groups_of(3, 2)
    shuffled[2], shuffled[3] = shuffled[3], shuffled[2]
    with pytest.raises(ValueError, match="completions of one prompt"):
        check_groups(shuffled, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        check_groups(groups_of(3, 2)[:5], 3)


# --- (b) GRPO -------------------------------------------------------------------------------------


def test_grpo_group_normalised_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 3.0, 3.0, 5.0, 5.0, 5.0])
    # group 1: mean 3, centred [−2, −1, 3], unbiased std √((4+1+9)/2) = √7
    # group 2: mean 2, centred [−2, 1, 1],  unbiased std √((4+1+1)/2) = √3
    # group 3: all equal → 0 (std 0, the 1e-4 keeps it finite)
    s7, s3 = math.sqrt(7) + 1e-4, math.sqrt(3) + 1e-4
    expected = torch.tensor([-2 / s7, -1 / s7, 3 / s7, -2 / s3, 1 / s3, 1 / s3, 0.0, 0.0, 0.0])
    torch.testing.assert_close(grpo_advantages(rewards, 3, scale_rewards=True), expected, atol=1e-6, rtol=0)
    unscaled = torch.tensor([-2.0, -1.0, 3.0, -2.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(grpo_advantages(rewards, 3, scale_rewards=False), unscaled, atol=1e-6, rtol=0)


def test_grpo_rewards_carry_no_kl_and_advantages_cover_every_token() -> None:
    log_ratio = torch.tensor([[0.5, 1.0, 0.5], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [2.0, 1.0, 1.0]])
    rollout = fake_rollout(log_ratio)
    trainer = SimpleNamespace(algo_config=GRPOConfig(k=3, scale_rewards=False), kl_ctl=FixedKL(0.5))
    rewards, kl = GRPOTrainer.kl_penalised_rewards(trainer, rollout)
    torch.testing.assert_close(rewards, TASK)  # task reward only
    torch.testing.assert_close(kl, log_ratio * MASK)  # the sampled KL, for the log
    advantages, _ = GRPOTrainer.advantages(trainer, rollout, rewards)
    expected = torch.tensor([-2.0, -1.0, 3.0, -2.0, 1.0, 1.0])  # r = [1, 2, 6 | 0, 3, 3] minus the group means
    torch.testing.assert_close(advantages, expected[:, None] * MASK, atol=1e-6, rtol=0)


def test_k3_kl_by_hand() -> None:
    # d = log π0 − log πθ per token: ln 2, −ln 2, 0 | ln 2, (masked)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-1.0 + LN2, -2.0 - LN2, -0.5], [-3.0 + LN2, 5.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    kl = k3_kl(logprobs, ref, mask)
    # e^d − d − 1:  d = ln 2 → 2 − ln 2 − 1 = 0.3068528;  d = −ln 2 → 0.5 + ln 2 − 1 = 0.1931472;  d = 0 → 0
    torch.testing.assert_close(kl[0], torch.tensor([1 - LN2, LN2 - 0.5, 0.0]), atol=1e-6, rtol=0)
    term = masked_mean(kl, mask)
    term_value = float(term.detach())
    assert term_value == pytest.approx((2 * (1 - LN2) + (LN2 - 0.5)) / 4, abs=1e-6)
    assert term_value == pytest.approx(0.2017132, abs=1e-6)
    term.backward()
    # ∂/∂log πθ (e^d − d − 1) = 1 − e^d: −1 where π0 > πθ (pushes log πθ up), +0.5 where π0 < πθ; / 4 tokens
    expected_grad = torch.tensor([[-0.25, 0.125, 0.0], [-0.25, 0.0, 0.0]])
    torch.testing.assert_close(logprobs.grad, expected_grad, atol=1e-6, rtol=0)


def test_k3_kl_ignores_extreme_log_probs_at_padded_positions() -> None:
    # A pad position scored −inf by the policy (e.g. under NLPO's mask) and 0 by the zeroed reference:
    # exp(0 − (−inf)) = inf, and inf·0 would be NaN without masking before the exponential.
    logprobs = torch.tensor([[-1.0, float("-inf")], [-2.0, -1e4]], requires_grad=True)
    ref = torch.tensor([[-1.0 + LN2, 0.0], [-2.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    kl = k3_kl(logprobs, ref, mask)
    torch.testing.assert_close(kl, torch.tensor([[1 - LN2, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    term = masked_mean(kl, mask)
    term.backward()
    assert torch.isfinite(term) and torch.isfinite(logprobs.grad).all()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.5, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)


# --- (c) REINFORCE --------------------------------------------------------------------------------


def test_reinforce_baseline_update_by_hand() -> None:
    assert update_baseline(None, 0.4, 0.9) == pytest.approx(0.4)  # the first batch sets it
    assert update_baseline(0.4, 1.0, 0.9) == pytest.approx(0.46)  # 0.9·0.4 + 0.1·1.0
    assert update_baseline(0.4, 1.0, 0.0) == pytest.approx(1.0)  # decay 0: the last batch's mean


def test_reinforce_returns_to_go_and_advantages_by_hand() -> None:
    rewards = torch.tensor([[0.1, 0.2, 0.7], [0.5, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # 9.0 is past the end of sample 1
    torch.testing.assert_close(returns_to_go(rewards, mask), torch.tensor([[1.0, 0.9, 0.7], [1.5, 1.0, 0.0]]))

    trainer = SimpleNamespace(algo_config=ReinforceConfig(baseline_decay=0.8), baseline=0.5, dist=Distributed())
    rollout = SimpleNamespace(mask=mask)
    advantages, returns = ReinforceTrainer.advantages(trainer, rollout, rewards)
    # A_t = G_t − 0.5: the baseline of the earlier iterations, not including this batch;
    # then b ← 0.8·0.5 + 0.2·mean G_0 = 0.4 + 0.2·1.25 = 0.65 for the next iteration
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.4, 0.2], [1.0, 0.5, 0.0]]), atol=1e-6, rtol=0)
    assert trainer.baseline == pytest.approx(0.65)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 0.9, 0.7], [1.5, 1.0, 0.0]]), atol=1e-6, rtol=0)
    advantages, _ = ReinforceTrainer.advantages(trainer, rollout, rewards)  # the next iteration sees 0.65
    torch.testing.assert_close(advantages, torch.tensor([[0.35, 0.25, 0.05], [0.85, 0.35, 0.0]]), atol=1e-6, rtol=0)

    trainer.baseline = None  # first iteration: no history, so b = this batch's mean G_0
    advantages, _ = ReinforceTrainer.advantages(trainer, rollout, rewards)
    assert trainer.baseline == pytest.approx(1.25)
    torch.testing.assert_close(advantages, torch.tensor([[-0.25, -0.35, -0.55], [0.25, -0.25, 0.0]]), atol=1e-6, rtol=0)


# --- (d), (f) no critic; rollout groups -----------------------------------------------------------


@pytest.mark.parametrize(("algo", "k"), [("reinforce", 1), ("rloo", 4), ("grpo", 4)])
def test_no_value_head_and_prompt_groups(tmp_path: Path, algo: str, k: int) -> None:
    config = load_config(
        overrides=overrides(
            tmp_path,
            algo,
            f"algo={algo}",
            "rollout.batch_size=8",
            f"{algo}.minibatch_size=4",
            "eval.num_prompts=4",
        )
    )
    trainer = get_trainer(algo)(config, console=quiet())
    assert not trainer.uses_critic
    assert trainer.policy.value_head is None and trainer.policy.critic is None
    assert len(trainer.optimizer.param_groups) == 1  # no value-head group

    seen: list[list[str]] = []
    collect = trainer.rollout

    def spy(samples: list[Sample]):
        seen.append([s.id for s in samples])
        return collect(samples)

    trainer.rollout = spy
    record = trainer.step(1)
    ids = seen[0]
    assert len(ids) == 8
    groups = [ids[i : i + k] for i in range(0, 8, k)]
    assert all(len(set(g)) == 1 for g in groups), ids  # k consecutive completions of one prompt
    assert len({g[0] for g in groups}) == 8 // k  # different prompts
    assert "explained_var" not in record and all(math.isfinite(v) for v in record.values() if isinstance(v, float))


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_batch_size_must_be_a_multiple_of_k(tmp_path: Path, algo: str) -> None:
    config = load_config(overrides=overrides(tmp_path, algo, f"algo={algo}", f"{algo}.k=4", "rollout.batch_size=6"))
    with pytest.raises(ValueError, match=r"rollout.batch_size \(6\) must be a multiple of"):
        get_trainer(algo)(config, console=quiet())
    assert not (tmp_path / algo).exists()


# --- (e) learning ---------------------------------------------------------------------------------

# The toy task ("say 'the'") with the causal tiny model (embeddings trained, see tests/test_train.py), 20 iterations
# of 32 completions, lr 1e-2. Measured held-out reward 0.003 → after, seeds 0-9:
#   reinforce  ≥ 0.94 on 9 seeds; seed 2 collapses to 0.00 (one lucky 'the' leaves a positive baseline, then every
#              all-zero batch has A = −b < 0 and Adam turns that tiny gradient into full-size steps away from the
#              sampled tokens, until the policy repeats one token)
#   rloo       1.00 on 9 seeds; seed 3 stops at 0.50 (" the X the X ...": every completion scores 0.5, so all
#              leave-one-out advantages are 0)
#   grpo       ≥ 0.90 on all 10 (slower to start: a group without any 'the' has zero advantages)
# Seed 0: reinforce 0.977, rloo 1.000, grpo 0.924.
LEARN = ["rollout.batch_size=32", "eval.num_prompts=32", "iterations=20", "model.freeze_embeddings=false"]


@pytest.mark.parametrize("algo", ["reinforce", "rloo", "grpo"])
def test_learns_toy_task(tmp_path: Path, algo: str) -> None:
    extra = [f"{algo}.lr=1e-2"]
    if algo != "grpo":  # GRPO's KL weight is grpo.beta, in the loss (default 0.04)
        extra += ["kl.controller=fixed", "kl.coef=0"]
    result = train(None, overrides(tmp_path, algo, f"algo={algo}", *LEARN, *extra), console=quiet())
    before, after = result.before["reward"], result.after["reward"]
    assert before < 0.05
    assert after > before + 0.5, f"{algo}: held-out reward {before:.3f} -> {after:.3f}"
    rewards = [r["reward/task"] for r in result.history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
    assert result.history[-1]["kl"] > 0.5  # the policy moved away from the reference
    assert all("loss/value" not in r and "explained_var" not in r for r in result.history)
    if algo == "grpo":
        assert all(r["kl_coef"] == 0.04 for r in result.history)  # β of the loss
        assert result.history[-1]["grpo/kl"] > 0.0 and "clip_frac" in result.history[-1]
    else:
        assert all(r["kl_coef"] == 0.0 for r in result.history)


# --- (g) exact resume -----------------------------------------------------------------------------

# The adaptive β makes the returns non-zero from the first iteration, so the baseline moves every iteration.
SMALL = [
    "algo=reinforce",
    "rollout.batch_size=8",
    "reinforce.minibatch_size=4",
    "reinforce.lr=1e-3",
    "kl.controller=adaptive",
    "kl.coef=0.05",
    "kl.target=0.5",
    "kl.horizon=40",
    "eval.num_prompts=8",
    "eval.batch_size=4",
    "checkpoint.every=3",
]


def test_reinforce_resume_is_exact(tmp_path: Path) -> None:
    train(None, overrides(tmp_path, "X", "iterations=6", *SMALL), console=quiet())
    first = train(None, overrides(tmp_path, "Y", "iterations=3", *SMALL), console=quiet())
    state = json.loads((tmp_path / "Y" / "checkpoints" / "step-3" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["reinforce_baseline"] == first.history[-1]["reinforce/baseline"]
    resumed = train(None, overrides(tmp_path, "Y", "iterations=6", *SMALL), resume=True, console=quiet())
    assert [r["iteration"] for r in resumed.history] == [4, 5, 6]

    x, y = train_records(tmp_path / "X"), train_records(tmp_path / "Y")
    assert [r["iteration"] for r in y] == [1, 2, 3, 4, 5, 6]
    assert y == x
    assert len({r["reinforce/baseline"] for r in x}) == 6  # it moved each iteration, and was restored on resume
