"""Running reward statistics: kept in checkpoints, the global batch's with several processes, and left
alone by held-out evaluation."""

from __future__ import annotations

import pytest

from lmgym.config import RewardConfig
from lmgym.rewards.base import frozen, load_reward_state, reward_state
from lmgym.rewards.factory import build_reward
from lmgym.rewards.normalize import RunningMeanStd, RunningNormalize


def length(prompts, generations, references, meta) -> list[float]:
    return [float(len(g)) for g in generations]


def call(reward, texts: list[str]) -> list[float]:
    return reward([""] * len(texts), texts, [[] for _ in texts], [{} for _ in texts])


def test_state_of_a_wrapped_normaliser_round_trips() -> None:
    config = RewardConfig(normalize=True, scale=2.0, clip=(None, 100.0))
    first, second = build_reward(config, length), build_reward(config, length)
    call(first, ["a", "abc", "abcdef"])
    state = reward_state(first)
    assert list(state) == ["reward"]  # RunningNormalize(Clip(Affine(fn))): only the normaliser has state
    assert state["reward"]["count"] == 3 and state["reward"]["mean"] == pytest.approx(2 * (1 + 3 + 6) / 3)
    load_reward_state(second, state)
    assert call(second, ["ab", "abcd"]) == call(first, ["ab", "abcd"])
    with pytest.raises(ValueError, match="does not have"):
        load_reward_state(build_reward(RewardConfig(), length), state)


def test_two_processes_normalise_by_the_global_batch() -> None:
    """Each process's count, Σx and Σx² summed over the processes give the statistics of the whole batch."""
    halves = ([1.0, 2.0, 3.0], [10.0, 20.0])
    shared: list[list[float]] = []

    def sum_over_processes(sums: list[float]) -> list[float]:  # both "processes" contribute before either reads
        shared.append(sums)
        return [a + b for a, b in zip(*halves_sums(), strict=True)]

    def halves_sums() -> list[list[float]]:
        return [[float(len(h)), sum(h), sum(v * v for v in h)] for h in halves]

    per_process = RunningMeanStd()
    per_process.update(halves[0], sum_over_processes)
    whole = RunningMeanStd()
    whole.update([*halves[0], *halves[1]])
    assert shared == [halves_sums()[0]]
    assert (per_process.count, per_process.mean) == (5, pytest.approx(7.2))
    assert per_process.std == pytest.approx(whole.std, rel=1e-12)


def test_evaluation_sees_the_raw_scale_and_moves_nothing() -> None:
    reward = RunningNormalize(length)
    call(reward, ["a", "abc"])  # mean 2, std 1
    before = reward.state_dict()
    with frozen(reward):
        assert call(reward, ["abcd", "ab"]) == [4.0, 2.0]  # the reward's own scale, comparable across runs
    assert reward.state_dict() == before and not reward.frozen
    # Training calls resume from the same statistics: 1, 3 and now 4 → mean 8/3, variance 14/9.
    assert call(reward, ["abcd"]) == pytest.approx([(4 - 8 / 3) / (14 / 9) ** 0.5])
