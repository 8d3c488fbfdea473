"""`lmgym rm train` on two processes (each scores half of every batch) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.distributed.test_data_parallel import free_port

ARGS = ["task=toy", "rm.rule=lexicon", "rm.model=tiny", "rm.lr=1e-3", "rm.epochs=1", "rm.batch_size=16", "threads=1"]


def rm_train(root: Path, nproc: int) -> Path:
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    sets = [arg for kv in [*ARGS, f"run_dir={root}", "name=rm"] for arg in ("--set", kv)]
    cmd = [sys.executable, *(launcher if nproc > 1 else []), "-m", "lmgym.cli", "rm", "train", *sets]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return root / "rm"


def test_two_processes_train_the_one_process_reward_model(tmp_path: Path) -> None:
    two, one = rm_train(tmp_path / "two", 2), rm_train(tmp_path / "one", 1)
    for name in ("head.safetensors", "trunk/model.safetensors"):
        got, want = load_file(str(two / name)), load_file(str(one / name))
        assert got.keys() == want.keys()
        if name == "head.safetensors":
            # The bias gets no gradient (comparisons depend on reward differences) beyond float rounding, which
            # Adam scales up to steps of ~lr either way: noise in both runs. The reward mean includes it.
            for run in (got, want):
                run["mean"] = run["mean"] - run.pop("bias")
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    # Logged once (by the main process), with the one-process losses: the mean over the whole batch.
    lines = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [r["step"] for r in single if r["kind"] == "train"]
    losses = [r["loss"] for r in lines if r["kind"] == "train"]
    assert losses == pytest.approx([r["loss"] for r in single if r["kind"] == "train"], rel=1e-4)
    assert losses[-1] < losses[0]
