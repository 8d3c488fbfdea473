"""Data parallelism on this CPU: two processes (torchrun, gloo) against one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("dp_train.py")
ALGOS = ("ppo", "trpo")

# Greedy decoding and min_new_tokens = max_new_tokens make the rollout independent of how the prompts are
# split (every completion has the same token count), so the mean gradient of two half batches equals the
# gradient of the whole batch. Whitening, the adaptive KL controller, TRPO's token sums and the logged
# statistics must then use the global batch for the two runs to agree.
COMMON = [
    "task=toy",
    "model=tiny",
    "threads=1",
    "iterations=3",
    "rollout.batch_size=8",
    "ppo.minibatch_size=8",
    "ppo.epochs=2",
    "ppo.lr=3e-3",
    "trpo.fisher_fraction=1.0",  # the Fisher subsample is taken per rank; all samples make it the same
    "trpo.max_kl=0.05",
    "kl.controller=adaptive",
    "kl.target=0.5",
    "kl.horizon=40",
    "generation.do_sample=false",
    "generation.max_new_tokens=6",
    "generation.min_new_tokens=6",
    "eval.num_prompts=4",
    "eval.batch_size=4",
    "checkpoint.every=2",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, nproc: int, algos: str, *extra: str, env: dict[str, str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    args = [str(out), algos, f"run_dir={out / 'runs'}", *COMMON, *extra]
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
        cmd = [sys.executable, *launcher, str(SCRIPT), *args]
    environ = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environ |= {"OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=environ)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dp")
    run(root / "two", 2, ",".join(ALGOS))
    run(root / "one", 1, ",".join(ALGOS))
    return root / "two", root / "one"


@pytest.mark.parametrize("algo", ALGOS)
def test_two_ranks_end_with_identical_parameters(runs: tuple[Path, Path], algo: str) -> None:
    two, _ = runs
    assert json.loads((two / f"{algo}-rank1.json").read_text())["world_size"] == 2
    rank0 = load_file(str(two / f"{algo}-rank0.safetensors"))
    rank1 = load_file(str(two / f"{algo}-rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


@pytest.mark.parametrize("algo", ALGOS)
def test_two_ranks_match_one_process_on_the_same_global_batch(runs: tuple[Path, Path], algo: str) -> None:
    two, one = runs
    single_info = json.loads((one / f"{algo}-rank0.json").read_text())
    assert single_info["world_size"] == 1
    dp, single = load_file(str(two / f"{algo}-rank0.safetensors")), load_file(str(one / f"{algo}-rank0.safetensors"))
    assert dp.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(dp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    # The runs trained: the value head (zero at the start) is far from zero.
    assert float(single["value_head.weight"].abs().max()) > 1e-3
    # The logged statistics are those of the global batch on the main process.
    h2 = json.loads((two / f"{algo}-rank0.json").read_text())["history"]
    h1 = single_info["history"]
    keys = ["reward/task", "kl", "kl_coef", "entropy", "explained_var", "loss/policy", "loss/value"]
    keys += ["trpo/step_kl", "trpo/accepted"] if algo == "trpo" else []
    for key in keys:
        assert [r[key] for r in h2] == pytest.approx([r[key] for r in h1], rel=1e-3, abs=1e-6), key
    if algo == "trpo":
        assert sum(r["trpo/accepted"] for r in h1) >= 1  # the natural-gradient step was taken


def test_main_process_alone_writes_the_run(runs: tuple[Path, Path]) -> None:
    two, _ = runs
    run_dir = two / "runs" / "ppo"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # once each, not once per rank
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert (run_dir / "final" / "config.json").exists()


def test_resume_with_another_number_of_processes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A checkpoint of the two-process run continues in one process, as the one-process run did."""
    two, one = runs
    out = tmp_path / "resumed"
    shutil.copytree(two / "runs", out / "runs")
    # Without the last checkpoint the resume starts from step-2 and redoes iteration 3.
    shutil.rmtree(out / "runs" / "ppo" / "checkpoints" / "step-3")
    run(out, 1, "ppo", "--resume")
    assert json.loads((out / "ppo-rank0.json").read_text())["start_iteration"] == 3
    resumed, single = load_file(str(out / "ppo-rank0.safetensors")), load_file(str(one / "ppo-rank0.safetensors"))
    for name in single:
        torch.testing.assert_close(resumed[name], single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_minibatches_count_samples_of_the_global_batch(tmp_path: Path) -> None:
    """rollout.batch_size=16, minibatch_size=4, 2 epochs: 4 optimizer steps per epoch whatever the process
    count. Each minibatch is cut from the global batch (a process may hold any share of it, even none: at
    iteration 1 rank 1 holds no sample of the first minibatch), so two processes take the steps one does."""
    extra = ["iterations=2", "rollout.batch_size=16", "ppo.minibatch_size=4", "grpo.minibatch_size=4", "grpo.epochs=2"]
    # Greedy decoding makes a group's completions identical, so GRPO's advantages are 0 and its only gradient
    # would be the KL term's at policy = reference: the float rounding between the reference's pass and the
    # policy's (packed differently on one process and on two), which Adam scales up to full-size steps.
    # Without the term GRPO's steps change nothing on either side, and the test checks how many there are.
    extra.append("grpo.beta=0")
    run(tmp_path / "two", 2, "ppo,grpo", *extra)
    run(tmp_path / "one", 1, "ppo,grpo", *extra)
    for algo in ("ppo", "grpo"):
        two = load_file(str(tmp_path / "two" / f"{algo}-rank0.safetensors"))
        one = load_file(str(tmp_path / "one" / f"{algo}-rank0.safetensors"))
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=f"{algo} {name}")
        for folder in ("two", "one"):
            history = json.loads((tmp_path / folder / f"{algo}-rank0.json").read_text())["history"]
            assert [r["update_steps"] for r in history] == [8.0, 8.0], (algo, folder)
        h2 = json.loads((tmp_path / "two" / f"{algo}-rank0.json").read_text())["history"]
        h1 = json.loads((tmp_path / "one" / f"{algo}-rank0.json").read_text())["history"]
        for key in ("loss/policy", "approx_kl", "clip_frac", "grad_norm"):
            assert [r[key] for r in h2] == pytest.approx([r[key] for r in h1], rel=1e-3, abs=1e-6), (algo, key)
