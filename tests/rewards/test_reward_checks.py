"""`check_scores` validates what a reward returns and names the reward and the sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmgym.rewards.base import FunctionReward, Reward, RewardError, as_reward, check_scores


def seq_reward(name: str = "my_metric") -> Reward:
    return FunctionReward(lambda *a: [], name=name)


def token_reward(name: str = "my_token_metric") -> Reward:
    return FunctionReward(lambda *a: [], per_token=True, name=name)


def test_valid_sequence_scores_become_floats() -> None:
    out = check_scores(seq_reward(), [1, 0.5, -2], [3, 1, 4])
    assert out == [1.0, 0.5, -2.0]
    assert all(type(v) is float for v in out)
    # Arrays and tensors are accepted.
    assert check_scores(seq_reward(), np.array([0.25, 0.75]), [1, 2]) == [0.25, 0.75]
    assert check_scores(seq_reward(), torch.tensor([0.5, 1.5]), [1, 2]) == [0.5, 1.5]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf, np.float32("nan")])
def test_non_finite_sequence_score_names_reward_and_sample(bad: float) -> None:
    with pytest.raises(RewardError) as info:
        check_scores(seq_reward("bleu_x"), [0.1, 0.2, bad, 0.4], [2, 2, 2, 2])
    message = str(info.value)
    assert "'bleu_x'" in message
    assert "sample 2" in message


@pytest.mark.parametrize("bad", ["high", None, [0.5], {"score": 1.0}])
def test_non_number_names_reward_and_sample(bad: object) -> None:
    with pytest.raises(RewardError, match=r"'judge'.*non-number for sample 1"):
        check_scores(seq_reward("judge"), [0.0, bad], [1, 1])


def test_bool_is_rejected() -> None:
    with pytest.raises(RewardError, match=r"'flag'.*sample 0"):
        check_scores(seq_reward("flag"), [True, 0.0], [1, 1])


@pytest.mark.parametrize(("scores", "got"), [([1.0, 2.0], "2"), ([1.0, 2.0, 3.0, 4.0], "4"), ([], "0")])
def test_wrong_length_names_reward_and_counts(scores: list[float], got: str) -> None:
    with pytest.raises(RewardError) as info:
        check_scores(seq_reward("rouge"), scores, [5, 5, 5])
    message = str(info.value)
    assert "'rouge'" in message and "3 scores" in message and message.endswith(f"got {got}")


def test_not_a_sequence() -> None:
    with pytest.raises(RewardError, match=r"'rouge'.*got float"):
        check_scores(seq_reward("rouge"), 0.5, [5])


def test_per_token_scores_valid() -> None:
    out = check_scores(token_reward(), [[1, 0, 0.5], [2.0]], [3, 1])
    assert out == [[1.0, 0.0, 0.5], [2.0]]
    assert check_scores(token_reward(), [np.array([0.0, 1.0]).tolist(), ()], [2, 0]) == [[0.0, 1.0], []]


def test_per_token_wrong_shapes_name_sample() -> None:
    r = token_reward("tok")
    with pytest.raises(RewardError, match=r"per-token reward 'tok': sample 1 needs 2 scores"):
        check_scores(r, [[1.0, 1.0, 1.0], [1.0]], [3, 2])
    with pytest.raises(RewardError, match=r"per-token reward 'tok': sample 0 needs 3 scores"):
        check_scores(r, [0.5, [1.0, 1.0]], [3, 2])  # a sequence score where a row is needed
    with pytest.raises(RewardError, match=r"'tok'.*sample 1"):
        check_scores(r, [[1.0], [0.0, float("nan")]], [1, 2])
    with pytest.raises(RewardError, match="2 scores"):
        check_scores(r, [[1.0]], [1, 1])


def test_as_reward_wraps_functions() -> None:
    def shouting(prompts, generations, references, meta):
        return [float(g.isupper()) for g in generations]

    r = as_reward(shouting)
    assert r.name == "shouting" and r.per_token is False
    assert r(["p", "q"], ["YES", "no"], [[], []], [{}, {}]) == [1.0, 0.0]
    assert as_reward(r) is r
    with pytest.raises(TypeError, match="callable"):
        as_reward(42)  # type: ignore[arg-type]
