"""Reward models (Bradley–Terry losses by hand, recovering a hidden rule, as a reward) and the RLHF pieces:
PPO-ptx and periodic reward-model retraining on the policy's own samples."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lmgym.algos.rlhf import check_retrainable
from lmgym.algos.rm import comparison_loss
from lmgym.api import train
from lmgym.cli import app
from lmgym.config import ConfigError
from lmgym.data.preferences import Comparison
from lmgym.data.registry import load_task
from lmgym.rewards.factory import named_reward
from lmgym.rewards.reward_model import RewardModelReward
from lmgym.rewards.tokens import TokenShare


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def nls(x: float) -> float:  # −log σ(x)
    return math.log1p(math.exp(-x))


def test_bradley_terry_losses_by_hand() -> None:
    rewards = torch.tensor([2.0, 0.5, -1.0])
    ranking = Comparison("r", "p", ("a", "b", "c"), margin=0.0)
    # The three pairs of a ranking, averaged (one batch element per comparison), margin m = 0.1.
    expected = (nls(2.0 - 0.5 - 0.1) + nls(2.0 + 1.0 - 0.1) + nls(0.5 + 1.0 - 0.1)) / 3
    assert float(comparison_loss(rewards, ranking, "ranking", 0.1)) == pytest.approx(expected)
    pair = Comparison("p", "p", ("a", "b"), margin=1.0)  # the pair's own margin adds to the configured one
    assert float(comparison_loss(rewards[:2], pair, "pairwise", 0.1)) == pytest.approx(nls(1.5 - 1.1))
    choice = Comparison("c", "p", ("a", "b", "c"), ranked=False)
    softmax_nll = -(2.0 - math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)))
    assert float(comparison_loss(rewards, choice, "best_of_k", 0.0)) == pytest.approx(softmax_nll)


@pytest.fixture(scope="module")
def lexicon_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lmgym rm train` on comparisons of random word strings ranked by a hidden lexicon rule."""
    root = tmp_path_factory.mktemp("rm")
    args = ["rm", "train", "--set", "task=toy", "--set", "rm.rule=lexicon", "--set", "rm.model=tiny",
            "--set", "rm.lr=1e-3", "--set", "rm.epochs=3", "--set", "threads=1", "--set", f"run_dir={root}",
            "--set", "name=lexicon"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "lexicon"


def test_reward_model_recovers_the_hidden_rule(lexicon_rm: Path) -> None:
    meta = json.loads((lexicon_rm / "reward_model.json").read_text())
    assert meta["metrics"]["eval/pairwise_accuracy_before"] < 0.65  # a random head is near chance
    assert meta["metrics"]["eval/pairwise_accuracy"] > 0.85  # held-out comparisons it never saw
    reward = RewardModelReward(lexicon_rm)
    scores = reward(["a"] * 3, [" great good fun", " the movie was", " awful bad boring"], [[]] * 3, [{}] * 3)
    assert scores[0] > scores[1] > scores[2]
    # A reward model folder is a reward by path in any config (reward.name=<folder>).
    assert named_reward(str(lexicon_rm)).score(["a"], [" great good fun"], [[]], [{}]) == pytest.approx(scores[:1])


def test_rm_train_bad_data_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["rm", "train", "--set", "rm.data=nope.jsonl", "--set", f"run_dir={tmp_path}",
                                      "--set", "rm.model=tiny", "--set", "task=toy"])  # fmt: skip
    assert result.exit_code == 2 and "rm.data" in result.output


def test_rlhf_ppo_against_the_reward_model_with_retraining(lexicon_rm: Path, tmp_path: Path) -> None:
    result = train(
        None,
        ["task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", "name=rlhf", "iterations=2",
         "rollout.batch_size=8", "eval.num_prompts=4", f"reward.name={lexicon_rm}", "rm.rule=lexicon",
         "rm.retrain_every=1", "rm.retrain_prompts=16", "rm.retrain_steps=2"],
        console=quiet(),
    )  # fmt: skip
    records = [r for r in result.history if r["kind"] == "train"]
    assert all("rm/new_comparisons" in r for r in records)
    assert (result.run_dir / "reward_model" / "reward_model.json").exists()
    gathered = (result.run_dir / "rm-comparisons.jsonl").read_text().splitlines()
    assert len(gathered) == sum(r["rm/new_comparisons"] for r in records)


def test_retraining_needs_a_reward_model() -> None:
    with pytest.raises(ConfigError, match=r"rm\.retrain_every"):
        check_retrainable(TokenShare("the"))


def test_ppo_ptx_term_fits_the_supervised_data(tmp_path: Path) -> None:
    rows = [{"prompt": s.prompt, "completion": " the film was great"} for s in load_task("toy").split("train")]
    data = tmp_path / "ptx.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def nothing(prompts, generations, references, meta):  # no task reward: only the ptx term teaches
        return [0.0] * len(generations)

    result = train(
        None,
        ["task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", "name=ptx", "iterations=4", "ppo.epochs=1",
         "ppo.lr=3e-3", "ppo.ptx_coef=1.0", f"ppo.ptx_data={data}", "ppo.ptx_batch_size=16", "eval.num_prompts=4",
         "model.freeze_embeddings=false"],
        reward=nothing,
        console=quiet(),
    )  # fmt: skip
    ptx = [r["loss/ptx"] for r in result.history]
    assert ptx[-1] < 0.8 * ptx[0]
