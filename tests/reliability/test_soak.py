"""Soak: 300 iterations of a tiny model, with periodic checkpoints and evaluations, must not grow in memory.

The run happens in a fresh subprocess so that pytest's own allocations do not blur the measurement; the
subprocess records its resident set size (RSS) after every iteration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import tiny_run

ITERATIONS = 300
WARM_UP = 50  # iterations after which caches, allocator pools and optimizer state have settled
TOLERANCE = 0.10

SCRIPT = r"""
import json, os, sys
from lmgym.algos import get_trainer
from lmgym.config import load_config

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


config = load_config(None, sys.argv[2:])
trainer = get_trainer(config.algo)(config, console=None)
rss = []
step = trainer.step


def measured_step(iteration):
    record = step(iteration)
    rss.append(rss_mib())
    return record


trainer.step = measured_step
trainer.train()
with open(sys.argv[1], "w") as f:
    json.dump(rss, f)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux)")
def test_memory_stays_flat_over_300_iterations(tmp_path: Path) -> None:
    script = tmp_path / "soak.py"
    script.write_text(SCRIPT, encoding="utf-8")
    out = tmp_path / "rss.json"
    overrides = tiny_run(
        tmp_path,
        "soak",
        f"iterations={ITERATIONS}",
        "rollout.batch_size=4",
        "ppo.epochs=1",
        "ppo.minibatch_size=4",
        "eval.every=100",
        "eval.num_prompts=4",
        "checkpoint.every=50",
        "checkpoint.keep=2",
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = json.loads(out.read_text(encoding="utf-8"))
    assert len(rss) == ITERATIONS
    settled = rss[WARM_UP - 1]
    worst = max(rss[WARM_UP:])
    growth = worst / settled - 1
    assert growth <= TOLERANCE, (
        f"RSS grew {growth:.1%} after warm-up ({settled:.0f} MiB at iteration {WARM_UP} -> peak {worst:.0f} MiB); "
        f"every 25th iteration: {[round(x) for x in rss[::25]]}"
    )
    # The run really did its periodic work: checkpoints pruned to the newest two.
    assert sorted(p.name for p in (tmp_path / "soak" / "checkpoints").iterdir()) == ["step-250", "step-300"]
