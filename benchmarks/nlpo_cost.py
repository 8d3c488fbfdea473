"""NLPO's seconds per iteration over PPO's, on one task's offline GRUE configs (the bundled model, top 8 of 30
blocks trainable), the two trainers taking turns iteration by iteration in one process.

    python benchmarks/nlpo_cost.py                       # imdb, 6 iterations each (the first is not timed)
    python benchmarks/nlpo_cost.py --task commongen --iterations 8

The first iteration is left out of the medians: NLPO's mask policy equals the learner then and does not run.
Ends with one JSON line: the median seconds per iteration of each, their ratio and the median phases.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("generate", "score", "update")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="imdb")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (the first is not timed)")
    with tempfile.TemporaryDirectory(prefix="lmgym-nlpo-cost-") as run_dir:
        common = [f"run_dir={run_dir}", f"threads={args.threads}", "eval.num_prompts=2", "checkpoint.every=0"]
        trainers = {
            algo: get_trainer(algo)(
                load_config(ROOT / "configs/grue/offline" / args.task / f"{algo}.yaml", [*common, f"name={algo}"]),
                console=Console(file=io.StringIO()),
            )
            for algo in ("ppo", "nlpo")
        }
        seconds: dict[str, list[float]] = {algo: [] for algo in trainers}
        phases: dict[str, list[dict[str, float]]] = {algo: [] for algo in trainers}
        for iteration in range(1, args.iterations + 1):
            for algo, trainer in trainers.items():
                t0 = time.perf_counter()
                record = trainer.step(iteration)
                elapsed = time.perf_counter() - t0
                print(f"{algo} iteration {iteration}: {elapsed:.2f} s", flush=True)
                if iteration > 1:
                    seconds[algo].append(elapsed)
                    phases[algo].append({p: record[f"time/{p}"] for p in PHASES})
    median = {algo: statistics.median(v) for algo, v in seconds.items()}
    result = {
        "task": args.task,
        "median_seconds": median,
        "nlpo_over_ppo": median["nlpo"] / median["ppo"],
        "phases": {a: {p: statistics.median(x[p] for x in v) for p in PHASES} for a, v in phases.items()},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
