"""What the guards' rollback copy costs in memory, on whatever device the model trains on.

Trains lmgym's PPO (value head, reference) and GRPO for a few steps in the setting of ``vs_trl.py --setting
full`` (every weight trainable, 32 completions of 24 tokens) twice per algorithm, with ``guards.rollback``
on and off, each run in its own process so that the peaks do not mix. Reported per run: seconds per step
(median, the first step left out), the peak of the training steps (the models loaded: CUDA, the peak of
``torch.cuda.max_memory_allocated`` and of ``memory_reserved``; CPU, peak RSS) and the size of the host copy.
Ends with one JSON line.

    python benchmarks/rollback_memory.py                          # the bundled model, CPU or the GPU there is
    python benchmarks/rollback_memory.py --model PATH --steps 6   # any model folder

On a CPU this takes minutes per run with the bundled model; ``--model tiny`` checks the script in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import torch
from memory import peak_rss_mib, reset_peak_rss
from trl_sides import PRESETS, Settings, lmgym_overrides

RUNS = [(algo, rollback) for algo in ("ppo", "grpo") for rollback in (True, False)]


@contextlib.contextmanager
def recorded_host_copy() -> Iterator[list[int]]:
    """The largest host copy the guards make meanwhile, in bytes (``[n]``, filled in as they make it)."""
    from lmgym.algos import guards

    largest = [0]
    keep_tensors = guards.keep_tensors

    def recorded(*args: Any, **kwargs: Any) -> Any:
        kept = keep_tensors(*args, **kwargs)
        largest[0] = max(largest[0], kept.nbytes)
        return kept

    guards.keep_tensors = recorded
    try:
        yield largest
    finally:
        guards.keep_tensors = keep_tensors


def run_one(settings: Settings, algo: str, extra: list[str]) -> dict[str, Any]:
    from rich.console import Console

    from lmgym.algos import get_trainer
    from lmgym.config import load_config

    with tempfile.TemporaryDirectory(prefix="lmgym-rollback-") as run_dir, recorded_host_copy() as copy_bytes:
        overrides = [*lmgym_overrides(settings, algo, run_dir), *extra]  # accelerate.device: auto (a GPU if any)
        config = load_config(None, overrides)
        trainer = get_trainer(algo)(config, overwrite=True, console=Console(file=io.StringIO()))
        device = next(trainer.policy.model.parameters()).device
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            loaded = torch.cuda.memory_allocated()
        reset_peak_rss()
        seconds = []
        for step in range(1, settings.steps + 1):
            t0 = time.perf_counter()
            trainer.step(step)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        out = {
            "algo": algo,
            "rollback": settings.rollback,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "seconds_per_step": median(seconds[1:]),
            "trainable_params": sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad),
            "host_copy_mib": copy_bytes[0] / 2**20,
            "peak_rss_mib": peak_rss_mib(),
        }
        if cuda:
            out |= {
                "loaded_mib": loaded / 2**20,
                "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
            }
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=Settings.model, help="lmgym model name or folder")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--set", action="append", default=[], help="an lmgym override for every run (KEY=VALUE)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "algo,rollback": run that one, print its JSON
    args = parser.parse_args(argv)
    settings = replace(Settings(), **PRESETS["full"], model=args.model, steps=args.steps, threads=args.threads)
    if args.one:
        algo, rollback = args.one.split(",")
        print(json.dumps(run_one(replace(settings, rollback=rollback == "on"), algo, args.set)))
        return
    results = []
    for algo, rollback in RUNS:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            *(f"--set={o}" for o in args.set),
            "--one",
            f"{algo},{'on' if rollback else 'off'}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        device = (
            f"peak allocated {result['peak_allocated_mib']:,.0f} MiB (loaded {result['loaded_mib']:,.0f}, reserved "
            f"{result['peak_reserved_mib']:,.0f}), "
            if "peak_allocated_mib" in result
            else ""
        )
        print(
            f"{algo:5s} rollback {'on ' if rollback else 'off'}: {result['seconds_per_step']:.2f} s/step, {device}"
            f"peak RSS {result['peak_rss_mib']:,.0f} MiB, host copy {result['host_copy_mib']:,.0f} MiB"
        )
    print(json.dumps({"model": args.model, "steps": args.steps, "set": args.set, "runs": results}))


if __name__ == "__main__":
    main()
