"""Shared pieces of the reliability tests: quick tiny-model runs and reading their records."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def tiny_run(run_dir: Path, name: str, *extra: str) -> list[str]:
    """A small PPO run on the toy task that checkpoints every iteration."""
    return [
        "task=toy",
        "model=tiny",
        "model.freeze_embeddings=true",  # the slow drift these tests were measured with (tiny's default trains them)
        "threads=1",
        f"run_dir={run_dir}",
        f"name={name}",
        "rollout.batch_size=8",
        "ppo.epochs=2",
        "ppo.minibatch_size=4",
        "ppo.lr=1e-3",
        "eval.num_prompts=8",
        "eval.batch_size=8",
        "checkpoint.every=1",
        "checkpoint.keep=3",
        *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            records.append(json.loads(line))
    return records


def comparable(run: Path) -> list[dict]:
    """metrics.jsonl without the timings, which differ between any two runs."""
    return [
        {k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s/"))}
        for r in read_jsonl(run / "metrics.jsonl")
    ]
