"""lmgym against TRL's GRPOTrainer on the same model, prompts, batch, reward and learning rate.

    python benchmarks/vs_trl.py                       # the bundled SmolLM2-135M-Instruct, 30 steps per side
    python benchmarks/vs_trl.py --setting full --steps 8   # every weight trainable (lr 2e-5)
    python benchmarks/vs_trl.py --model tiny --steps 3 --completions 8 --micro-batch 4 --new-tokens 6

Runs TRL's GRPO, lmgym's GRPO and lmgym's PPO, each in its own subprocess (their memory peaks
do not mix), prints each side's command line, a table per side and the ratios, and ends with one
JSON line: the setting (top8: the demo's top 8 blocks; full: every weight trainable), the keys
grpo_step_ratio, ppo_step_ratio, time_to_reward_ratio, update_peak_fraction and memory_ratio, and
per side the seconds per step, the phase profile, the generation's FLOP/s over the peak and the peak
RSS. Needs TRL: pip install -e '.[bench]'. How every number is made: benchmarks/trl_sides.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from trl_sides import (
    RESULT_KEYS,
    SIDES,
    compare,
    lmgym_overrides,
    moving_means,
    phase_profile,
    run_sides_interleaved,
    setting_name,
    settings_from_argv,
    side_command,
    trl_grpo_config_kwargs,
)

from lmgym.environment import machine

TARGETS = {  # per setting (trl_sides.setting_name), key: (bound, "<=" or ">=")
    "top8": {
        "grpo_step_ratio": (0.7, "<="),
        "ppo_step_ratio": (1.0, "<="),
        "time_to_reward_ratio": (0.5, "<="),
        "update_peak_fraction": (0.6, ">="),
        "memory_ratio": (1.3, "<="),
    },
    "full": {
        "grpo_step_ratio": (0.5, "<="),
        "ppo_step_ratio": (0.6, "<="),
        "time_to_reward_ratio": (0.5, "<="),
        "update_peak_fraction": (0.7, ">="),
        "memory_ratio": (1.0, "<="),
    },
}
TARGETS["custom"] = TARGETS["top8"]


def per_side(values: dict[str, Any], spec: str) -> str:
    """``side value, side value, ...`` with each value formatted by ``spec``."""
    return ", ".join(f"{side} {value:{spec}}" for side, value in values.items())


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_side(console: Console, name: str, result: dict[str, Any]) -> None:
    steps = result["steps"]
    means = moving_means([s["reward"] for s in steps])
    table = Table(title=f"{name}: per step", title_justify="left")
    columns = ["step", "seconds", "elapsed", "reward", f"mean of last {len(steps) and 5}"]
    lmgym = name.startswith("lmgym")
    if lmgym:
        columns += ["generate", "score", "reward fn", "update"]
    for col in columns:
        table.add_column(col, justify="right")
    elapsed = 0.0
    for i, (step, mean) in enumerate(zip(steps, means, strict=True), start=1):
        elapsed += step["seconds"]
        row = [
            str(i),
            f"{step['seconds']:.2f}",
            f"{elapsed:.1f}",
            f"{step['reward']:+.3f}",
            "" if mean is None else f"{mean:+.3f}",
        ]
        if lmgym:
            row += [f"{step[f'seconds_{p}']:.2f}" for p in ("generate", "score", "reward", "update")]
        table.add_row(*row)
    console.print(table)


def check(key: str, value: float, setting: str) -> str:
    bound, op = TARGETS[setting][key]
    if math.isnan(value):
        return f"NOT measured (target {op} {bound}): too few steps for a moving mean, or no level both reach"
    ok = value <= bound if op == "<=" else value >= bound
    return f"{'met' if ok else 'NOT met'} (target {op} {bound})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings, args = settings_from_argv(argv)
    console = Console(width=None if Console().is_terminal else 160)
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("the TRL side needs trl: pip install -e '.[bench]'")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lmgym-vs-trl-"))
    out.mkdir(parents=True, exist_ok=True)

    console.print(
        f"[bold]lmgym vs TRL[/]: {settings.model} on sentiment, {settings.steps} steps per side, "
        f"{settings.completions} completions × {settings.new_tokens} tokens per step (k={settings.k} per prompt "
        f"for GRPO, {settings.ppo_k} for PPO), one optimizer step per step over {settings.accumulation} "
        f"micro-batches of {settings.micro_batch}, lr {settings.lr}, "
        + (
            f"top {settings.trainable_layers} blocks trainable"
            if settings.trainable_layers is not None
            else "all blocks trainable"
        )
        + (", embeddings frozen" if settings.freeze_embeddings else "")
        + f", {settings.threads} threads (setting: {setting_name(settings)})",
        highlight=False,
    )
    hardware = machine()
    console.print("machine: " + ", ".join(f"{k} {v}" for k, v in hardware.items() if v is not None), highlight=False)
    for side in SIDES:
        console.print(f"\n[bold]{side}[/]: {shlex.join(side_command(settings, side))}", highlight=False)
        if side == "trl-grpo":
            console.print(f"  trl.GRPOConfig({trl_grpo_config_kwargs(settings, '<tmp>')})", highlight=False)
        else:
            algo = side.removeprefix("lmgym-")
            overrides = " ".join(f"--set {o}" for o in lmgym_overrides(settings, algo, "<tmp>"))
            console.print(f"  = lmgym train {overrides}", highlight=False)
    console.print(
        "\nThe three sides load at once, each in its own process, then take turns step by step (one computes at a "
        f"time). Load average before: {load_average()}",
        highlight=False,
    )
    t0 = time.perf_counter()
    with console.status("loading the three sides") as status:

        def on_step(step: int) -> None:
            status.update(f"step {step}/{settings.steps} of every side done ({time.perf_counter() - t0:.0f} s)")

        results = run_sides_interleaved(settings, out, SIDES, on_step, args.max_seconds)
    loads = load_average()
    console.print(f"done in {time.perf_counter() - t0:.0f} s; load average after: {loads}", highlight=False)
    for side in SIDES:
        print_side(console, side, results[side])
    (out / "results.json").write_text(json.dumps(results, indent=1))

    ratios = compare(results, settings)
    setting = setting_name(settings)
    details = ratios["details"]
    console.print("\n[bold]profile[/] (median seconds per phase, lmgym sides): ", highlight=False)
    for side in ("lmgym-grpo", "lmgym-ppo"):
        prof = phase_profile(results[side])
        console.print(f"  {side}: " + ", ".join(f"{p} {s:.2f}" for p, s in prof.items()), highlight=False)
    console.print(
        "  seconds per step (median, warm-up step excluded): " + per_side(details["seconds_per_step"], ".2f"),
        highlight=False,
    )
    console.print(
        "  process CPU seconds per step (median; with 1 thread, independent of other load): "
        + per_side(details["cpu_seconds_per_step"], ".2f")
        + "; ratios to TRL: "
        + per_side(details["cpu_step_ratios"], ".3f"),
        highlight=False,
    )
    ttr = details["time_to_reward"]
    console.print(
        f"  time to reward: level {ttr['level']:+.3f} ({ttr['level_is']}, mean of the last {ttr['window']} steps); "
        + ", ".join(f"{k} {'never' if v is None else f'{v:.0f} s'}" for k, v in ttr["seconds"].items())
        + "; best moving means: "
        + per_side(ttr["best_moving_mean"], "+.3f"),
        highlight=False,
    )
    console.print(
        "  update FLOP per CPU second over the fp32 matmul peak measured right after each step (same clock, same "
        "process; median over the steps): "
        + per_side(details["update_peak_fraction"], ".1%")
        + " (those peaks, GFLOP per CPU second: "
        + ", ".join(f"{k} {min(v):.0f}-{max(v):.0f}" for k, v in details["step_matmul_peak_cpu_gflops"].items())
        + "; at the end of the run: "
        + per_side(details["matmul_peak_cpu_gflops"], ".1f")
        + "); by the wall clock: "
        + per_side(details["update_peak_fraction_wall_clock"], ".1%")
        + " (peak GFLOP/s: "
        + per_side(details["matmul_peak_gflops"], ".1f")
        + ")",
        highlight=False,
    )
    console.print(
        "  generation FLOP/s over the fp32 matmul peak (wall clock): "
        + per_side(details["generation_peak_fraction_wall_clock"], ".1%")
        + "; the decoding step's products alone reach "
        + per_side(details["decode_matmul_ceiling_fraction"], ".1%")
        + " of that peak at its rows, and generation "
        + per_side(details["generation_fraction_of_ceiling"], ".1%")
        + " of that ceiling",
        highlight=False,
    )
    console.print(
        "  score phase, most forward passes of one model per batch: "
        + per_side(details["score_forwards_per_model_max"], ""),
        highlight=False,
    )
    console.print(
        "  peak RSS of the training steps (MiB): " + per_side(details["peak_rss_mib"], ".0f"),
        highlight=False,
    )
    console.print("\n[bold]ratios[/]", highlight=False)
    for key in RESULT_KEYS:
        console.print(f"  {key} = {ratios[key]:.3f}  {check(key, ratios[key], setting)}", highlight=False)
    console.print(f"results and logs: {out}", highlight=False)
    line = {
        "setting": setting,
        **{key: None if math.isnan(ratios[key]) else ratios[key] for key in RESULT_KEYS},  # null: not measurable
        "ppo_k": settings.ppo_k,
        "seconds_per_step": details["seconds_per_step"],
        "profile": {side: phase_profile(results[side]) for side in ("lmgym-grpo", "lmgym-ppo")},
        "generation_peak_fraction": details["generation_peak_fraction_wall_clock"],
        "decode_matmul_ceiling_fraction": details["decode_matmul_ceiling_fraction"],
        "peak_rss_mib": details["peak_rss_mib"],
        "machine": hardware,
    }
    print(json.dumps(line))
    return {**line, "details": details, "out": str(out)}


if __name__ == "__main__":
    main()
