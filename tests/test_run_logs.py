"""What a run logs beyond metrics.jsonl: training samples in rollouts.jsonl (with each part of a composed reward
and the KL per sample, kept consistent by a resume), one line per start of the run in environment.jsonl, and
registered metrics at every evaluation (eval.metrics)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lmgym.api import evaluate_run, train
from lmgym.cli import app
from lmgym.config import ConfigError
from lmgym.data.registry import load_task
from lmgym.environment import machine
from lmgym.errors import UserCodeError
from lmgym.rewards.base import FunctionReward
from lmgym.rewards.compose import Affine, Product, WeightedSum, part_scores
from lmgym.rollout.metric_set import MetricSet

BASE = [
    "task=toy",
    "model=tiny",
    "threads=1",
    "rollout.batch_size=4",
    "ppo.minibatch_size=4",
    "ppo.epochs=1",
    "eval.num_prompts=4",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def words(prompts, generations, references, meta):
    return [float(len(g.split())) for g in generations]


def letters_e(prompts, generations, references, meta):
    return [float(g.count("e")) for g in generations]


def composed() -> WeightedSum:
    return WeightedSum([(0.5, FunctionReward(words, name="words")), (-2.0, FunctionReward(letters_e, name="e"))])


class Crash:
    def on_iteration_end(self, iteration: int, metrics: dict, trainer: object) -> None:
        if iteration == 3:
            raise RuntimeError("killed")


def test_rollouts_jsonl_has_each_part_of_the_reward_and_the_kl(tmp_path: Path) -> None:
    settings = [*BASE, f"run_dir={tmp_path}", "name=r", "iterations=4", "rollout.log_samples_every=2"]
    train(None, settings, reward=composed(), console=Console(file=io.StringIO()))
    rows = read_jsonl(tmp_path / "r" / "rollouts.jsonl")
    assert [r["iteration"] for r in rows] == [2] * 4 + [4] * 4  # every 2nd iteration, the whole batch
    train_records = {r["iteration"]: r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if r["kind"] == "train"}
    for row in rows:
        assert set(row) == {"iteration", "id", "prompt", "generation", "reward", "reward_parts", "kl"}
        assert row["reward_parts"] == {
            "words": words(0, [row["generation"]], 0, 0)[0],
            "e": row["generation"].count("e"),
        }
        assert row["reward"] == pytest.approx(0.5 * row["reward_parts"]["words"] - 2 * row["reward_parts"]["e"])
    for iteration in (2, 4):
        batch = [r for r in rows if r["iteration"] == iteration]
        record = train_records[iteration]
        assert sum(r["reward"] for r in batch) / 4 == pytest.approx(record["reward/task"], abs=1e-5)
        assert sum(r["kl"] for r in batch) / 4 == pytest.approx(record["kl"], abs=1e-5)


def test_rollouts_jsonl_stays_consistent_over_a_crash_and_resume_and_environment_jsonl_has_each_start(
    tmp_path: Path,
) -> None:
    settings = [*BASE, f"run_dir={tmp_path}", "name=r", "iterations=4", "rollout.log_samples_every=1"]
    settings.append("checkpoint.every=2")
    with pytest.raises(UserCodeError):
        train(None, settings, callbacks=[Crash()], console=Console(file=io.StringIO()))
    assert {r["iteration"] for r in read_jsonl(tmp_path / "r" / "rollouts.jsonl")} == {1, 2, 3}
    train(None, settings, resume=True, console=Console(file=io.StringIO()))
    rows = read_jsonl(tmp_path / "r" / "rollouts.jsonl")
    assert [r["iteration"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4  # iteration 3 once
    train(None, [*settings, "name=straight"], console=Console(file=io.StringIO()))
    straight = read_jsonl(tmp_path / "straight" / "rollouts.jsonl")
    assert [(r["id"], r["generation"], r["reward"]) for r in rows] == [
        (r["id"], r["generation"], r["reward"]) for r in straight
    ]  # the resumed iterations repeat what an uninterrupted run samples
    starts = read_jsonl(tmp_path / "r" / "environment.jsonl")
    assert [s["start_iteration"] for s in starts] == [1, 3]  # new, then resumed from the checkpoint of iteration 2
    assert all(s["processes"] == 1 and s["device"] == "cpu" and s["machine"] == machine() for s in starts)
    assert [s["start_iteration"] for s in read_jsonl(tmp_path / "straight" / "environment.jsonl")] == [1]


def test_part_scores_of_nested_and_token_level_rewards() -> None:
    per_token = FunctionReward(lambda p, g, r, m: [[1.0, 2.0] for _ in g], per_token=True, name="steps")
    inner = Product([(1.0, FunctionReward(words, name="words")), (2.0, FunctionReward(letters_e, name="e"))])
    reward = Affine(WeightedSum([(1.0, inner), (1.0, per_token), (3.0, FunctionReward(words, name="words"))]), 2, 0)
    meta = [{"gen_token_ids": [1, 2]}, {"gen_token_ids": [3, 4]}]
    reward(["", ""], ["see me", "x"], [[], []], meta)
    assert part_scores(reward, 2) == {
        "product": [2.0 * 3.0**2, 1.0 * 0.0**2],  # the product's own value: words · e²
        "steps": [3.0, 3.0],  # a per-token part summed over its tokens
        "words": [2.0, 1.0],
        "e": [3.0, 0.0],
        "words#2": [2.0, 1.0],
    }
    assert part_scores(reward, 5) == {}  # the last call was on another batch


def test_eval_metrics_logged_at_every_evaluation_and_missing_ones_reported_once(tmp_path: Path) -> None:
    out = io.StringIO()
    settings = [*BASE, f"run_dir={tmp_path}", "name=m", "iterations=2", "eval.every=1"]
    settings.append("eval.metrics=[diversity, classifier, bleu]")  # runs; needs options; fails (toy: no references)
    result = train(None, settings, console=Console(file=out, width=200))
    evals = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [0, 1, 2]
    assert all({"eval/msttr", "eval/entropy-1", "eval/vocab-size", "eval/reward"} <= r.keys() for r in evals)
    assert not any("eval/bleu" in r for r in evals)
    printed = out.getvalue()
    assert printed.count("eval.metrics: classifier is left out: needs options") == 1
    assert printed.count("eval.metrics: bleu is left out: failed:") == 1
    assert "msttr" in printed.split("held-out evaluation")[1]  # in the before/after table
    assert result.before["vocab-size"] == evals[0]["eval/vocab-size"]
    samples = read_jsonl(tmp_path / "m" / "samples.jsonl")
    assert all(s["metrics"]["vocab-size"] == len(set(s["generation"].split())) for s in samples)
    cli = CliRunner().invoke(app, ["eval", str(tmp_path / "m")], env={"COLUMNS": "200"})
    assert cli.exit_code == 0, cli.output
    assert f"{evals[-1]['eval/vocab-size']:.4f}" in cli.output and "msttr" in cli.output
    assert "classifier is left out" in cli.output
    assert evaluate_run(tmp_path / "m")["vocab-size"] == evals[-1]["eval/vocab-size"]


def test_default_metrics_are_the_tasks_registered_ones(tmp_path: Path) -> None:
    toy = load_task("toy")
    task = dataclasses.replace(toy, metrics=("reward", "perplexity", "sentiment", "diversity"))
    assert MetricSet.for_task(task, None).names == ["diversity"]  # not evaluated twice, nor unregistered ones
    assert MetricSet.for_task(task, []).names == []
    result = train(None, [*BASE, f"run_dir={tmp_path}", "name=d", "iterations=1"], task=task,
                   console=Console(file=io.StringIO()))  # fmt: skip
    assert "msttr" in result.after and "msttr" in result.before
    with pytest.raises(ConfigError, match=r"eval\.metrics: 'bluee' is not a registered metric; `lmgym metrics`"):
        train(
            None, [*BASE, f"run_dir={tmp_path}", "name=e", "eval.metrics=[bluee]"], console=Console(file=io.StringIO())
        )
    assert not (tmp_path / "e").exists()


def test_a_failing_annotation_costs_only_the_metrics_that_need_it() -> None:
    """A task hook that cannot annotate (say, its classifier cannot be built here) is reported with the metrics that
    needed it; the others are computed."""

    def broken(generations, meta):
        raise OSError("no classifier here")

    task = dataclasses.replace(load_task("toy"), annotate=broken)
    samples = task.split("test")[:3]
    metrics = MetricSet(["intent_accuracy", "diversity"], task.annotate)
    scored = metrics.score(samples, ["a b", "c", "d e f"])
    assert scored.scores["vocab-size"] == 6.0
    assert "intent_accuracy" in scored.missing and "OSError: no classifier here" in scored.missing["intent_accuracy"]
    assert metrics.score(samples, ["a", "b", "c"]).missing == {}  # reported once; only diversity runs again
