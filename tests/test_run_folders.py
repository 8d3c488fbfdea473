"""`lmgym train CONFIG --resume` continues the run that `lmgym train CONFIG` started (a config without a name
gets a new timestamped folder each time), and time-based checkpoints bound what a crash can lose."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from lmgym.api import train
from lmgym.errors import TrainingError
from lmgym.rewards.tokens import TokenShare

SETTINGS = """task: toy
model: tiny
threads: 1
iterations: 4
rollout: {batch_size: 8}
ppo: {minibatch_size: 8, epochs: 1, lr: 1.0e-3}
eval: {num_prompts: 4, batch_size: 4}
checkpoint: {every: 1, keep: 5}
"""


class FailsAtIteration(TokenShare):
    """The toy reward, raising in the rollout of iteration ``at`` (its calls: 1 initial evaluation, then one per
    iteration)."""

    def __init__(self, at: int) -> None:
        super().__init__("the")
        self.calls, self.at = 0, at

    def score(self, prompts, generations, references, meta):
        self.calls += 1
        if self.calls == self.at + 1:
            raise RuntimeError("the scoring service went away")
        return super().score(prompts, generations, references, meta)


def quiet() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200), out


def runs_in(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "config.yaml").exists())


def test_resume_with_the_same_command_finds_the_newest_unfinished_run(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(SETTINGS + f"run_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    # A finished run of the same config, then one that crashes in iteration 3 (after checkpoint step-2).
    train(config, console=quiet()[0])
    time.sleep(1.1)  # timestamped names have one-second resolution
    with pytest.raises(TrainingError, match="the scoring service went away"):
        train(config, reward=FailsAtIteration(3), console=quiet()[0])
    finished, crashed = runs_in(tmp_path / "runs")
    assert (finished / "final").exists() and not (crashed / "final").exists()
    # A run of another config is never a candidate.
    other = tmp_path / "other.yaml"
    other.write_text(SETTINGS.replace("lr: 1.0e-3", "lr: 2.0e-3") + f"run_dir: {tmp_path / 'runs'}\n", "utf-8")

    console, out = quiet()
    result = train(config, resume=True, console=console)  # the same command, plus --resume
    assert result.run_dir == crashed
    assert f"--resume picked {crashed}" in out.getvalue()
    assert [r["iteration"] for r in result.history] == [3, 4]
    assert len(runs_in(tmp_path / "runs")) == 2  # no new folder

    with pytest.raises(FileNotFoundError, match=r"every run of this config under .* has finished"):
        train(config, resume=True, console=quiet()[0])
    with pytest.raises(FileNotFoundError, match="no run of this config"):
        train(other, resume=True, console=quiet()[0])


def test_several_unfinished_runs_that_cannot_be_told_apart_are_listed(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(SETTINGS + f"run_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    with pytest.raises(TrainingError):
        train(config, reward=FailsAtIteration(2), console=quiet()[0])
    (first,) = runs_in(tmp_path / "runs")
    twin = first.with_name(first.name + "-copy")
    shutil.copytree(first, twin)
    stamp = time.time() - 60
    for folder in (first, twin):  # the same last activity: nothing says which is newer
        for path in (folder / "metrics.jsonl", folder / "checkpoints", folder / "config.yaml"):
            os.utime(path, (stamp, stamp))
    with pytest.raises(FileNotFoundError, match=f"several unfinished runs .*{first.name}.*pick one: --set name="):
        train(config, resume=True, console=quiet()[0])


def test_a_crash_in_the_first_iteration_leaves_no_run_folder(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(SETTINGS + f"run_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="Nothing had been trained yet"):
        train(config, reward=FailsAtIteration(1), console=quiet()[0])
    assert runs_in(tmp_path / "runs") == []


def test_time_based_checkpoints(tmp_path: Path) -> None:
    """checkpoint.every_minutes: a checkpoint after the first iteration that ends that long after the last
    save (here a moment, so after every iteration), with checkpoint.every off."""
    base = ["task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", "rollout.batch_size=8",
            "ppo.minibatch_size=8", "ppo.epochs=1", "eval.num_prompts=2", "iterations=3",
            "checkpoint.keep=5"]  # fmt: skip
    timed = train(None, [*base, "name=timed", "checkpoint.every_minutes=1e-6"], console=quiet()[0])
    assert sorted(p.name for p in (timed.run_dir / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3"]
    default = train(None, [*base, "name=default"], console=quiet()[0])  # 10 minutes: only the end here
    assert sorted(p.name for p in (default.run_dir / "checkpoints").iterdir()) == ["step-3"]
