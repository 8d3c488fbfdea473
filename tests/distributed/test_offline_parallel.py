"""SFT, DPO and ILQL on two processes (replicated, and sharded where supported) against one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.distributed.test_data_parallel import run

ALGOS = ("sft", "dpo", "ilql")
SHARDED = ("sft", "dpo")  # ILQL's Q heads read the output embedding whole: it runs replicated only
# Logged completions are sampled (by the main process, shared with the others); the batches split 2 + 2.
# SFT learns from demonstrations of very different lengths, so the two halves of a batch hold different numbers
# of tokens and each process's loss must be weighted by its share of them.
OFFLINE = [
    "iterations=3",
    "generation.do_sample=true",
    "generation.min_new_tokens=0",
    *(f"{algo}.{key}" for algo in ALGOS for key in ("logged_prompts=6", "logged_per_prompt=2", "batch_size=4")),
    *(f"{algo}.lr=3e-3" for algo in ALGOS),
    "dpo.data=logged",
    "ilql.data=logged",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("offline")
    demos = root / "demos.jsonl"
    words = ["the", "cat", "sat", "on", "a", "warm", "mat", "and", "looked", "at", "the", "rain", "outside"]
    lines = [{"prompt": f"Say {i} words:", "completion": " ".join(words[: 1 + (5 * i) % 13])} for i in range(8)]
    demos.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    extra = [*OFFLINE, f"sft.data={demos}"]
    run(root / "replicated", 2, ",".join(ALGOS), *extra)
    run(root / "sharded", 2, ",".join(SHARDED), *extra, "accelerate.sharding=full")
    run(root / "one", 1, ",".join(ALGOS), *extra)
    return {name: root / name for name in ("replicated", "sharded", "one")}


@pytest.mark.parametrize(("mode", "algo"), [*(("replicated", a) for a in ALGOS), *(("sharded", a) for a in SHARDED)])
def test_two_processes_take_the_one_process_steps(runs: dict[str, Path], mode: str, algo: str) -> None:
    info = json.loads((runs[mode] / f"{algo}-rank0.json").read_text())
    assert info["world_size"] == 2 and info["sharding"] == ("full" if mode == "sharded" else "none")
    got = load_file(str(runs[mode] / f"{algo}-rank0.safetensors"))
    other = load_file(str(runs[mode] / f"{algo}-rank1.safetensors"))
    want = load_file(str(runs["one"] / f"{algo}-rank0.safetensors"))
    assert got.keys() == want.keys() and want
    start = load_file(str(runs["one"] / f"{algo}-rank0.safetensors"))
    for name in want:
        assert torch.equal(got[name], other[name]), name
        # Adam divides by √v: a weight whose gradient is ~0 moves by float noise, so a rare element may differ by
        # a few 1e-5 after 3 steps at lr 3e-3 (each step moves a weight by up to 3e-3).
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4, msg=name)
    losses = [r["loss/total"] for r in info["history"]]
    single = [r["loss/total"] for r in json.loads((runs["one"] / f"{algo}-rank0.json").read_text())["history"]]
    assert losses == pytest.approx(single, rel=1e-4, abs=1e-6)
    assert start  # the files exist for every algorithm


def test_logged_data_is_written_once_and_shared(runs: dict[str, Path]) -> None:
    """The main process samples the logged completions; the others train on exactly that data."""
    for algo in ("dpo", "ilql"):
        two = (runs["replicated"] / "runs" / algo / "data.jsonl").read_text()
        one = (runs["one"] / "runs" / algo / "data.jsonl").read_text()
        assert two == one and two.count("\n") == 12
