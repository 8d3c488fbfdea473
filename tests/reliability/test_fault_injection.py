"""kill -9 a training process at random moments and at the worst ones, then `--resume`: every resumed run
must reproduce the uninterrupted run's metrics, samples and final weights exactly.

The training runs in a subprocess started through a small wrapper (written below) that can also kill itself
at chosen points: inside a checkpoint write (files written, not yet renamed), half-way through deleting an old
checkpoint, half-way through appending a metrics line, and while saving the final model.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import comparable, quiet, read_jsonl, tiny_run
from safetensors.torch import load_file

from lmgym.api import train

WRAPPER = r"""
import os, signal, sys
from pathlib import Path

mode, nth = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}


def die_on_nth() -> None:
    calls["n"] += 1
    if calls["n"] == nth:
        os.kill(os.getpid(), signal.SIGKILL)


if mode == "checkpoint-write":  # temporary folder complete and fsynced, not yet renamed into place
    from lmgym import checkpoint
    fsync = checkpoint._fsync_tree
    checkpoint._fsync_tree = lambda path: (fsync(path), die_on_nth())
elif mode == "checkpoint-delete":  # an old checkpoint renamed aside, its files not yet removed
    from lmgym import checkpoint

    def discard(path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}")
        os.replace(path, trash)
        die_on_nth()

    checkpoint._discard = discard
elif mode == "metrics-line":  # half a JSON line appended to metrics.jsonl
    from lmgym import tracking
    log = tracking.RunDir.log_metrics

    def log_metrics(self, record):
        if calls["n"] + 1 == nth:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write('{"iteration": 9, "kind": "tr')
        die_on_nth()
        log(self, record)

    tracking.RunDir.log_metrics = log_metrics
elif mode == "final-save":
    from lmgym.algos import onpolicy
    save_final = onpolicy.OnPolicyTrainer.save_final

    def killed_save_final(self, *args, **kwargs):
        save_final(self, *args, **kwargs)
        die_on_nth()

    onpolicy.OnPolicyTrainer.save_final = killed_save_final

from lmgym.cli import main

sys.argv = ["lmgym", *sys.argv[3:]]
main()
"""

ITERATIONS = 6
RANDOM_TRIALS = 20
TARGETED = [("checkpoint-write", 2), ("checkpoint-delete", 2), ("metrics-line", 4), ("final-save", 1)]


def args_for(run_dir: Path, name: str) -> list[str]:
    return tiny_run(run_dir, name, f"iterations={ITERATIONS}", "eval.every=2", "checkpoint.keep=2")


def command(wrapper: Path, mode: str, nth: int, run_dir: Path, name: str) -> list[str]:
    sets = [part for arg in args_for(run_dir, name) for part in ("--set", arg)]
    return [sys.executable, str(wrapper), mode, str(nth), "train", *sets]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def final_weights(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The wrapper, and the uninterrupted run (in a subprocess too) with its training time."""
    root = tmp_path_factory.mktemp("faults")
    wrapper = root / "wrapper.py"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    proc = start(command(wrapper, "none", 0, root, "reference"))
    config = root / "reference" / "config.yaml"
    while not config.exists() and proc.poll() is None:
        time.sleep(0.02)
    began = time.perf_counter()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return wrapper, root / "reference", time.perf_counter() - began


def check_resume(root: Path, name: str, reference: Path) -> None:
    run = root / name
    resumed = train(None, args_for(root, name), resume=True, console=quiet())
    assert resumed.run_dir == run
    assert comparable(run) == comparable(reference), name
    assert read_jsonl(run / "samples.jsonl") == read_jsonl(reference / "samples.jsonl"), name
    final, expected = final_weights(run), final_weights(reference)
    assert final.keys() == expected.keys() and all(bool((final[k] == expected[k]).all()) for k in final), name
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".trash-"))]


@pytest.mark.parametrize(("mode", "nth"), TARGETED, ids=[m for m, _ in TARGETED])
def test_kill_at_the_worst_moments_then_resume(setup, mode: str, nth: int) -> None:
    wrapper, reference, _ = setup
    root = reference.parent
    name = f"targeted-{mode}"
    proc = start(command(wrapper, mode, nth, root, name))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"{mode} never reached its kill point: {err.decode()[-2000:]}"
    check_resume(root, name, reference)


def test_kill_at_random_moments_then_resume(setup) -> None:
    wrapper, reference, train_seconds = setup
    root = reference.parent
    rng = random.Random(20261122)
    killed = 0
    for trial in range(RANDOM_TRIALS):
        name = f"random-{trial}"
        proc = start(command(wrapper, "none", 0, root, name))
        while not (root / name / "config.yaml").exists() and proc.poll() is None:
            time.sleep(0.01)
        # Anywhere from the first generation to near the final save (the targeted final-save kill covers the
        # last moments): the whole reference time let a trial that ran faster than the reference end first.
        time.sleep(rng.uniform(0, 0.8 * train_seconds))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate(timeout=300)
        check_resume(root, name, reference)
    assert killed >= RANDOM_TRIALS * 3 // 4  # almost every trial really died mid-run
