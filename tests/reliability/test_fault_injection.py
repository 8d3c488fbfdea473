"""kill -9 a training process at random moments and at the worst ones, then `--resume`: every resumed run
must reproduce the uninterrupted run's metrics, samples and final weights exactly.

The uninterrupted run is a fresh `lmgym train` subprocess. The runs that get killed are forked from a small
server process (written below) that has imported the library once: a fresh interpreter spends most of a short
run importing torch and transformers (about 9 of 14 s here), and a forked child is killed the same way. The
server can also make a child kill itself at chosen points: inside a checkpoint write (files written, not yet
renamed), half-way through deleting an old checkpoint, half-way through appending a metrics line, and while
saving the final model. A test checks that an uninterrupted forked run is the fresh run, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import comparable, quiet, read_jsonl, tiny_run
from safetensors.torch import load_file

from lmgym.api import train

SERVER = r"""
import json, os, signal, sys, traceback
from pathlib import Path

import lmgym.api  # the slow imports, once, before any fork (they start no thread: the fork is safe)
from lmgym import checkpoint, tracking
from lmgym.algos import onpolicy
from lmgym.cli import main

calls = {"n": 0}


def arm(mode: str, nth: int) -> None:
    def die_on_nth() -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "checkpoint-write":  # temporary folder complete and fsynced, not yet renamed into place
        fsync = checkpoint._fsync_tree
        checkpoint._fsync_tree = lambda path: (fsync(path), die_on_nth())
    elif mode == "checkpoint-delete":  # an old checkpoint renamed aside, its files not yet removed

        def discard(path: Path) -> None:
            trash = path.with_name(f".trash-{path.name}")
            os.replace(path, trash)
            die_on_nth()

        checkpoint._discard = discard
    elif mode == "metrics-line":  # half a JSON line appended to metrics.jsonl
        log = tracking.RunDir.log_metrics

        def log_metrics(self, record):
            if calls["n"] + 1 == nth:
                with self.metrics_path.open("a", encoding="utf-8") as f:
                    f.write('{"iteration": 9, "kind": "tr')
            die_on_nth()
            log(self, record)

        tracking.RunDir.log_metrics = log_metrics
    elif mode == "final-save":
        save_final = onpolicy.OnPolicyTrainer.save_final

        def killed_save_final(self, *args, **kwargs):
            save_final(self, *args, **kwargs)
            die_on_nth()

        onpolicy.OnPolicyTrainer.save_final = killed_save_final


def run(request: dict) -> None:
    # One request at a time: its pid on one line at the start, its exit code (-9: killed) on the next at the end.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            arm(request["mode"], request["nth"])
            sys.argv = ["lmgym", *request["args"]]
            try:
                main()
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)


for line in iter(sys.stdin.readline, ""):
    run(json.loads(line))
"""

ITERATIONS = 6
RANDOM_TRIALS = 20
TARGETED = [("checkpoint-write", 2), ("checkpoint-delete", 2), ("metrics-line", 4), ("final-save", 1)]
TIMEOUT = 300  # seconds a run may take


def args_for(run_dir: Path, name: str) -> list[str]:
    return tiny_run(run_dir, name, f"iterations={ITERATIONS}", "eval.every=2", "checkpoint.keep=2")


def cli_args(run_dir: Path, name: str) -> list[str]:
    """`args_for` as `lmgym train` options."""
    return ["train", *(part for arg in args_for(run_dir, name) for part in ("--set", arg))]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Server:
    """The forking server: `start` a run (a forked child), then `end` it (its exit code; -9 if killed)."""

    def __init__(self, script: Path, root: Path) -> None:
        self.root = root
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment(), text=True
        )
        self.pid: int | None = None
        self._read = b""  # read from the server, not yet taken as lines
        self._ended: str | None = None  # the running child's exit code, once the server has sent it

    def _line(self, timeout: float) -> str | None:
        """The server's next line, or None if none comes within ``timeout`` seconds. Read from the pipe's
        descriptor, unbuffered: a buffered reader could hold a line that `select` then never reports."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._read:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:  # the server is gone
                return None
            self._read += chunk
        line, self._read = self._read.split(b"\n", 1)
        return line.decode()

    def start(self, name: str, mode: str = "none", nth: int = 0) -> None:
        request = {"args": cli_args(self.root, name), "mode": mode, "nth": nth, "stderr": str(self.stderr(name))}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = self._line(TIMEOUT)
        assert pid, f"the server did not start {name}"
        self.pid = int(pid)

    def running(self) -> bool:
        if self._ended is None:
            self._ended = self._line(0)
        return self._ended is None and self.proc.poll() is None

    def end(self, name: str, kill: bool = False) -> int:
        """Wait for the run to end (killing it first with ``kill``, if it still runs); its exit code."""
        if kill and self.running():
            os.kill(self.pid, signal.SIGKILL)
        code = self._ended or self._line(TIMEOUT)
        self._ended = None
        assert code, f"{name} did not end within {TIMEOUT} s: {self.stderr(name).read_text()[-2000:]}"
        self.pid = None
        return int(code)

    def stderr(self, name: str) -> Path:
        return self.root / f"{name}.stderr"

    def close(self) -> None:
        if self.pid is not None:  # a test failed while its run was going: the server waits on it
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT)


def final_weights(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, float]]:
    """The forking server; the uninterrupted run, made by a fresh `lmgym train` process; and the training time
    of the same run forked from the server (``forked``), the time the random kills are drawn from."""
    root = tmp_path_factory.mktemp("faults")
    script = root / "server.py"
    script.write_text(SERVER, encoding="utf-8")
    server = Server(script, root)  # imports while the reference runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmgym.cli", *cli_args(root, "reference")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    server.start("forked")
    while not (root / "forked" / "config.yaml").exists() and server.running():
        time.sleep(0.01)
    began = time.perf_counter()
    assert server.end("forked") == 0, server.stderr("forked").read_text()[-2000:]
    yield server, root / "reference", time.perf_counter() - began
    server.close()


def assert_same_run(run: Path, reference: Path) -> None:
    """The same metrics (but timings), samples and final weights, bit for bit."""
    assert comparable(run) == comparable(reference), run.name
    assert read_jsonl(run / "samples.jsonl") == read_jsonl(reference / "samples.jsonl"), run.name
    final, expected = final_weights(run), final_weights(reference)
    assert final.keys() == expected.keys() and all(bool((final[k] == expected[k]).all()) for k in final), run.name


def test_a_run_forked_from_the_server_is_the_run_a_fresh_process_makes(setup) -> None:
    _, reference, _ = setup
    assert_same_run(reference.parent / "forked", reference)


def check_resume(root: Path, name: str, reference: Path) -> None:
    run = root / name
    resumed = train(None, args_for(root, name), resume=True, console=quiet())
    assert resumed.run_dir == run
    assert_same_run(run, reference)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".trash-"))]


@pytest.mark.parametrize(("mode", "nth"), TARGETED, ids=[m for m, _ in TARGETED])
def test_kill_at_the_worst_moments_then_resume(setup, mode: str, nth: int) -> None:
    server, reference, _ = setup
    name = f"targeted-{mode}"
    server.start(name, mode, nth)
    code = server.end(name)
    assert code == -signal.SIGKILL, f"{mode} never reached its kill point: {server.stderr(name).read_text()[-2000:]}"
    check_resume(reference.parent, name, reference)


def test_kill_at_random_moments_then_resume(setup) -> None:
    server, reference, train_seconds = setup
    root = reference.parent
    rng = random.Random(20261122)
    killed = 0
    for trial in range(RANDOM_TRIALS):
        name = f"random-{trial}"
        server.start(name)
        while not (root / name / "config.yaml").exists() and server.running():
            time.sleep(0.01)
        # Anywhere from the first generation to near the final save (the targeted final-save kill covers the
        # last moments): the whole reference time let a trial that ran faster than the reference end first.
        time.sleep(rng.uniform(0, 0.8 * train_seconds))
        code = server.end(name, kill=True)
        killed += code == -signal.SIGKILL
        assert code in (0, -signal.SIGKILL), f"{name}: {server.stderr(name).read_text()[-2000:]}"
        check_resume(root, name, reference)
    assert killed >= RANDOM_TRIALS * 3 // 4  # almost every trial really died mid-run
