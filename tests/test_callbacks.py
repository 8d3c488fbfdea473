"""Callbacks of the Python API (`lmgym.train(..., callbacks=[...])`): each hook's calls and arguments, stopping
early with a clean end (final evaluation, final/), and an exception in a callback named as the user's code."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import lmgym
from lmgym.algos.trainer import Trainer
from lmgym.errors import UserCodeError

BASE = [
    "task=toy",
    "model=tiny",
    "threads=1",
    "rollout.batch_size=4",
    "ppo.minibatch_size=4",
    "ppo.epochs=1",
    "eval.num_prompts=4",
]


def settings(root: Path, name: str, *extra: str) -> list[str]:
    return [*BASE, f"run_dir={root}", f"name={name}", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_iteration_end(self, iteration: int, metrics: dict[str, Any], trainer: Trainer) -> None:
        assert isinstance(trainer, Trainer) and trainer.iteration == iteration
        self.calls.append(("iteration", iteration, dict(metrics)))

    def on_evaluate(self, iteration: int, metrics: dict[str, float]) -> None:
        self.calls.append(("evaluate", iteration, dict(metrics)))

    def on_save(self, path: Path) -> None:
        self.calls.append(("save", path, sorted(p.name for p in path.iterdir())))


class OnlyEvaluations:
    def __init__(self) -> None:
        self.iterations: list[int] = []

    def on_evaluate(self, iteration: int, metrics: dict[str, float]) -> None:
        self.iterations.append(iteration)


def test_each_hook_is_called_with_its_arguments(tmp_path: Path) -> None:
    recorder, partial = Recorder(), OnlyEvaluations()
    overrides = settings(tmp_path, "hooks", "iterations=4", "eval.every=2", "checkpoint.every=2")
    result = lmgym.train(None, overrides, callbacks=[recorder, partial], console=Console(file=io.StringIO()))
    run = result.run_dir
    records = read_jsonl(run / "metrics.jsonl")
    kinds = [(c[0], c[1]) for c in recorder.calls]
    assert kinds == [
        ("evaluate", 0),
        ("iteration", 1),
        ("iteration", 2),
        ("evaluate", 2),
        ("save", run / "checkpoints" / "step-2"),
        ("iteration", 3),
        ("iteration", 4),
        ("save", run / "checkpoints" / "step-4"),
        ("evaluate", 4),
        ("save", run / "final"),
    ]
    trained = [r for r in records if r["kind"] == "train"]
    assert [c[2] for c in recorder.calls if c[0] == "iteration"] == trained  # the record metrics.jsonl holds
    evaluated = [r for r in records if r["kind"] == "eval"]
    assert [c[2] for c in recorder.calls if c[0] == "evaluate"] == [
        {k.removeprefix("eval/"): v for k, v in r.items() if k.startswith("eval/")} for r in evaluated
    ]
    saved = [c[2] for c in recorder.calls if c[0] == "save"]
    assert "trainer_state.json" in saved[0]
    assert {"model.safetensors", "README.md", "reward_kl.png", "value_head.safetensors"} <= set(saved[-1])
    assert partial.iterations == [0, 2, 4]  # a callback with one hook gets that hook only


class StopAt:
    def __init__(self, iteration: int, by_request: bool) -> None:
        self.iteration, self.by_request = iteration, by_request

    def on_iteration_end(self, iteration: int, metrics: dict[str, Any], trainer: Trainer) -> bool | None:
        if iteration != self.iteration:
            return None
        if self.by_request:
            trainer.request_stop("enough")
            return None
        return True


@pytest.mark.parametrize("by_request", [False, True], ids=["returns-true", "request-stop"])
def test_a_callback_stops_training_and_the_run_ends_cleanly(tmp_path: Path, by_request: bool) -> None:
    out = io.StringIO()
    overrides = settings(tmp_path, "stop", "iterations=5")
    result = lmgym.train(None, overrides, callbacks=[StopAt(2, by_request)], console=Console(file=out, width=150))
    assert [r["iteration"] for r in result.history] == [1, 2]
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    final = [r for r in records if r.get("final")]
    assert len(final) == 1 and final[0]["iteration"] == 2 and final[0]["eval/reward"] == result.after["reward"]
    assert (result.run_dir / "final" / "model.safetensors").exists()
    assert (result.run_dir / "final" / "README.md").exists()
    assert (result.run_dir / "checkpoints" / "step-2").is_dir()  # the stopped run can be resumed
    reason = "enough" if by_request else "a callback asked to stop after iteration 2"
    assert f"stopping after iteration 2: {reason}" in out.getvalue()


class Broken:
    def on_evaluate(self, iteration: int, metrics: dict[str, float]) -> None:
        if iteration > 0:
            raise ValueError("bad callback")


def test_an_exception_in_a_callback_names_it(tmp_path: Path) -> None:
    overrides = settings(tmp_path, "broken", "iterations=2", "eval.every=1", "checkpoint.every=1")
    with pytest.raises(UserCodeError) as caught:
        lmgym.train(None, overrides, callbacks=[Broken()], console=Console(file=io.StringIO()))
    message = str(caught.value)
    assert message.startswith("callback Broken.on_evaluate raised ValueError at ")
    assert f"{Path(__file__).resolve()}:" in message and message.endswith(": bad callback")
    assert isinstance(caught.value.__cause__, ValueError)
    assert [r["iteration"] for r in read_jsonl(tmp_path / "broken" / "metrics.jsonl") if r["kind"] == "train"] == [1]
