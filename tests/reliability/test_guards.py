"""Numerical guards: a NaN reward, a NaN loss or an exploding KL stops the run with an error that names
the iteration and the sample, after saving the last good state as the newest checkpoint."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from reliability_helpers import quiet, tiny_run
from safetensors.torch import load_file

from lmgym.api import train
from lmgym.checkpoint import list_checkpoints
from lmgym.errors import TrainingError
from lmgym.rewards.base import Reward
from lmgym.rewards.tokens import TokenShare


def weights(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step}" / "policy.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every failure is compared with (a checkpoint after every iteration)."""
    root = tmp_path_factory.mktemp("clean")
    result = train(
        None,
        tiny_run(root, "clean", "iterations=6", "checkpoint.keep=10", "ppo.lr=1e-2", "kl.coef=0"),
        console=quiet(),
    )
    return result.run_dir


class NaNOnCall(Reward):
    """The toy reward, except that call ``bad_call`` returns NaN for sample ``bad_sample``."""

    name = "flaky"

    def __init__(self, bad_call: int, bad_sample: int) -> None:
        self.calls, self.bad_call, self.bad_sample = 0, bad_call, bad_sample
        self.inner = TokenShare("the")

    def score(self, prompts, generations, references, meta):
        self.calls += 1
        scores = list(self.inner(prompts, generations, references, meta))
        if self.calls == self.bad_call:
            scores[self.bad_sample] = math.nan
            self.culprit = generations[self.bad_sample]
        return scores


def test_nan_reward_names_iteration_and_sample_and_keeps_last_good_state(tmp_path: Path, clean: Path) -> None:
    reward = NaNOnCall(bad_call=4, bad_sample=5)  # call 1 is the initial evaluation; call 4 is iteration 3
    args = tiny_run(tmp_path, "nan-reward", "iterations=6", "checkpoint.every=5", "ppo.lr=1e-2", "kl.coef=0")
    with pytest.raises(TrainingError) as info:
        train(None, args, reward=reward, console=quiet())
    message = str(info.value)
    assert message.startswith("iteration 3:")
    assert "'flaky' returned nan for sample 5" in message
    assert "prompt '" in message and repr(reward.culprit)[1:-1][:40] in message
    run = tmp_path / "nan-reward"
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert same_weights(weights(run, 2), weights(clean, 2))


def test_nan_loss_rolls_back_the_half_done_update(tmp_path: Path, clean: Path, monkeypatch) -> None:
    from lmgym.algos import ppo

    calls = {"n": 0}
    original = ppo.PPOTrainer.policy_loss

    def poisoned(self, terms):
        loss, stats = original(self, terms)
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 3:  # 4 minibatch steps per iteration: iteration 3's third, after two steps
            loss = loss * math.nan
        return loss, stats

    monkeypatch.setattr(ppo.PPOTrainer, "policy_loss", poisoned)
    args = tiny_run(tmp_path, "nan-loss", "iterations=6", "checkpoint.every=5", "ppo.lr=1e-2", "kl.coef=0")
    with pytest.raises(TrainingError, match=r"^iteration 3: the loss is nan .*sample") as info:
        train(None, args, console=quiet())
    assert "saved in" in str(info.value) and "--resume" in str(info.value)
    run = tmp_path / "nan-loss"
    # No periodic checkpoint existed: the guard wrote the state before iteration 3, not the half-updated one.
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert same_weights(weights(run, 2), weights(clean, 2))


def test_exploding_kl_rolls_back_to_before_the_update_that_caused_it(tmp_path: Path, clean: Path) -> None:
    args = tiny_run(tmp_path, "kl", "iterations=6", "checkpoint.keep=10", "ppo.lr=1e-2", "kl.coef=0")
    with pytest.raises(TrainingError, match=r"past guards\.max_kl=0\.02; the largest is .* for sample") as info:
        train(None, [*args, "guards.max_kl=0.02"], console=quiet())
    failed_at = int(re.match(r"iteration (\d+):", str(info.value)).group(1))
    assert failed_at >= 3
    good = failed_at - 2  # iteration failed_at − 1's update produced the policy that drifted
    run = tmp_path / "kl"
    steps = [step for step, _ in list_checkpoints(run / "checkpoints")]
    assert steps[-1] == good, steps
    assert (run / "checkpoints" / f"rejected-step-{failed_at - 1}").is_dir()  # set aside, not deleted
    assert same_weights(weights(run, good), weights(clean, good))


def test_resume_after_a_guard_continues_from_the_good_state(tmp_path: Path, clean: Path) -> None:
    reward = NaNOnCall(bad_call=4, bad_sample=0)
    args = tiny_run(tmp_path, "again", "iterations=6", "checkpoint.keep=10", "ppo.lr=1e-2", "kl.coef=0")
    with pytest.raises(TrainingError):
        train(None, args, reward=reward, console=quiet())
    resumed = train(None, args, resume=True, console=quiet())  # the reward is fixed: the plain toy reward
    assert [r["iteration"] for r in resumed.history] == [3, 4, 5, 6]
    assert same_weights(weights(tmp_path / "again", 6), weights(clean, 6))
