"""benchmarks/rollback_memory.py on the tiny model: each run reports the host copy the guards made (the trainable
weights and Adam's two moments when rollback is on, nothing when it is off) and its memory peaks."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the harness is not in the library

from rollback_memory import run_one
from trl_sides import PRESETS, Settings


def test_the_host_copy_holds_weights_and_both_moments_only_with_rollback() -> None:
    settings = replace(Settings(), **PRESETS["full"], model="tiny", steps=2, threads=1, completions=8, micro_batch=8)
    on = run_one(replace(settings, rollback=True), "grpo", [])
    off = run_one(replace(settings, rollback=False), "grpo", [])
    assert on["device"] == off["device"] == "cpu" and on["rollback"] and not off["rollback"]
    fp32_state = 3 * 4 * on["trainable_params"] / 2**20  # weights, exp_avg, exp_avg_sq (MiB)
    assert fp32_state <= on["host_copy_mib"] < 1.05 * fp32_state + 0.01  # (plus alignment and Adam's steps)
    assert off["host_copy_mib"] == 0
    assert on["peak_rss_mib"] > 0 and on["seconds_per_step"] > 0
