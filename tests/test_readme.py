"""Every command and snippet of the README's short tour does what the README says it does.

The tour's commands are read from README.md itself: a command the test does not know fails it, so the
README and this test cannot drift apart. Commands that need the bundled 135M model or take many minutes
(the demo, the benchmarks) are listed in NOT_RUN with the test that covers what they do."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmgym.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOUR = README[README.index("## A short tour") : README.index("### Algorithms")]

# Commands of the tour this test does not run, and where their claim is checked instead.
NOT_RUN = {
    "lmgym eval runs/demo": "needs the demo run; `lmgym eval` of the toy run below stands in for it",
    "lmgym train configs/demo.yaml --resume": "the bundled model (minutes); tests/test_run_folders.py resumes",
    "make bench": "about 25 minutes; tests/benchmarks/test_vs_trl.py runs the comparison on the tiny model",
    "make bench-speed": "the bundled model; tests/bench/test_speed.py, tests/benchmarks/test_decoding.py and "
    "test_where_time_goes.py: tiny model",
}


def tour_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", TOUR, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TOUR, re.S)


def evals(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in records if r["kind"] == "eval"]


def run_cli(command: str, tmp_path: Path) -> tuple[str, Path | None]:
    """Run one `lmgym ...` line of the README with run_dir in tmp_path; returns its output and run folder."""
    args = shlex.split(command)[1:]
    name = None
    if args[0] == "train":
        name = re.sub(r"\W+", "-", command)[-60:]
        args += ["--set", f"run_dir={tmp_path}", "--set", f"name={name}", "--set", "threads=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{command}\n{result.output}"
    return result.output, (tmp_path / name if name else None)


def test_the_tour_lists_only_commands_this_test_knows() -> None:
    known = {
        "lmgym train --set model=tiny --set iterations=3",
        "lmgym train configs/toy.yaml",
        "lmgym train configs/toy.yaml --set model=tiny-seq2seq --set iterations=30",
        "lmgym tasks",
        *NOT_RUN,
    }
    assert set(tour_commands()) == known


def test_tour_commands_do_what_the_readme_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    commands = tour_commands()

    # "the whole loop (rollout, PPO update, evaluation) in seconds"
    _, smoke = run_cli(commands[0], tmp_path)
    records = [json.loads(line) for line in (smoke / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert (smoke / "final" / "config.json").exists() and len(evals(smoke)) == 2

    # "PPO learns the toy task: held-out reward ~0.003 → ~1", for the causal and the seq2seq tiny model
    for command in commands[1:3]:
        _, run = run_cli(command, tmp_path)
        before, after = evals(run)[0]["eval/reward"], evals(run)[-1]["eval/reward"]
        assert before < 0.01 and after > 0.8, f"{command}: {before:.3f} -> {after:.3f}"

    output, _ = run_cli(commands[3], tmp_path)  # "registered tasks"
    assert all(name in output for name in ("toy", "sentiment", "imdb", "narrativeqa"))
    output, _ = run_cli(f"lmgym eval {run}", tmp_path)  # "re-evaluate a finished run" (the seq2seq toy run)
    assert f"{evals(run)[-1]['eval/reward']:.4f}" in output


def test_tour_python_snippets_run_and_learn(tmp_path: Path) -> None:
    """The snippets run as written, from a folder holding configs/toy.yaml (runs/ lands there)."""
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "toy.yaml", tmp_path / "configs")
    script = "\n".join(python_snippets())
    script += "\nprint('SNIPPET', result.before['reward'], result.after['reward'], reward, terminated or truncated)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _, before, after, reward, done_episode = done.stdout.splitlines()[-1].split()
    assert float(before) < 0.01 and float(after) > 0.8  # "~0.003 -> ~1"
    assert float(reward) == 0.0 or done_episode == "True"  # a sequence reward is paid at the episode's end
    shortness = [d for d in (tmp_path / "runs").iterdir() if d.name.startswith("sentiment-ppo-")]
    assert len(shortness) == 1  # the plain-function reward trained a run
    rewards = [r["reward/task"] for r in map(json.loads, (shortness[0] / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"]  # fmt: skip
    assert len(rewards) == 5 and all(r <= 0 for r in rewards)  # −(words)/10
