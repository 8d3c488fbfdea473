"""The lmgym-vs-TRL harness (benchmarks/trl_sides.py): its ratio arithmetic and a tiny-model smoke run of all
three sides (skipped without trl). Its FLOP estimate is lmgym.bench.speed's (tests/bench/test_speed.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the harness is not in the library

from trl_sides import (
    RESULT_KEYS,
    Settings,
    compare,
    moving_means,
    run_side,
    setting_name,
    settings_from_argv,
    time_to_level,
)

needs_trl = pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install -e '.[bench]')"
)


def _steps(seconds: list[float], rewards: list[float], **extra: float) -> list[dict]:
    return [{"seconds": s, "cpu_seconds": s, "reward": r, **extra} for s, r in zip(seconds, rewards, strict=True)]


def test_moving_mean_and_time_to_level() -> None:
    rewards = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.0]
    means = moving_means(rewards)
    assert means[:4] == [None] * 4
    assert means[4] == pytest.approx(0.4) and means[5] == pytest.approx(0.6) and means[6] == pytest.approx(0.56)
    steps = _steps([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], rewards)
    assert time_to_level(steps, 0.4) == pytest.approx(15.0)  # reached at step 5: 1+2+3+4+5
    assert time_to_level(steps, 0.5) == pytest.approx(21.0)  # step 6
    assert time_to_level(steps, 0.7) is None


def test_compare_ratios_and_fallback_level() -> None:
    settings = Settings(model="tiny", steps=7, completions=8, k=4, micro_batch=4)
    # The lmgym sides measure the matmul peak right after each step.
    lmgym_extra = {
        "seconds_update": 1.0,
        "seconds_generate": 2.0,
        "matmul_peak_gflops": 100.0,
        "matmul_peak_cpu_gflops": 100.0,
    }
    trl = {
        "steps": _steps([9.0] + [4.0] * 6, [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4]),  # best moving mean 0.34
        "peak_rss_mib": 1000.0,
        "matmul_peak_gflops": 100.0,
        "matmul_peak_cpu_gflops": 100.0,
    }
    grpo = {
        "steps": _steps([9.0] + [2.0] * 6, [0.0, 0.3, 0.3, 0.5, 0.6, 0.7, 0.7], **lmgym_extra),
        "update_flops": [0.0] + [30e9] * 6,  # 30 GFLOP in 1 s of update = 30% of a 100 GFLOP/s peak
        "generation_flops": [0.0] + [40e9] * 6,  # 40 GFLOP in 2 s of generation = 20% of the peak
        "update_cpu_seconds": [1.0] * 7,
        "matmul_peak_cpu_gflops": 100.0,
        "score_forwards": [{"policy": 0, "reference": 1}] * 7,
        "peak_rss_mib": 1100.0,
        "matmul_peak_gflops": 100.0,
        "decode_matmul_ceiling_gflops": 40.0,  # the decoding step's products alone: 40% of the peak
    }
    ppo = {
        "steps": _steps([9.0] + [3.0] * 6, [0.0] * 7, **lmgym_extra),
        "update_flops": [0.0] + [50e9] * 6,
        "generation_flops": [0.0] + [60e9] * 6,
        "update_cpu_seconds": [1.0] * 7,
        "matmul_peak_cpu_gflops": 100.0,
        "score_forwards": [{"policy": 0, "reference": 1}] * 7,
        "peak_rss_mib": 1200.0,
        "matmul_peak_gflops": 100.0,
        "decode_matmul_ceiling_gflops": 50.0,
    }
    # Each step's update over the peak measured right after it, the median over the timed steps: a slow update
    # (3 CPU seconds: 10%) and one next to a slow peak (50 GFLOP/s: 60%) leave the median at 30%.
    grpo["update_cpu_seconds"][2] = 3.0
    grpo["steps"][3]["matmul_peak_cpu_gflops"] = 50.0
    ratios = compare({"trl-grpo": trl, "lmgym-grpo": grpo, "lmgym-ppo": ppo}, settings)
    assert ratios["details"]["update_peak_fraction"] == pytest.approx({"lmgym-grpo": 0.3, "lmgym-ppo": 0.5})
    assert ratios["grpo_step_ratio"] == pytest.approx(0.5)
    assert ratios["ppo_step_ratio"] == pytest.approx(0.75)
    assert ratios["memory_ratio"] == pytest.approx(1.2)
    assert ratios["update_peak_fraction"] == pytest.approx(0.3)  # the lower of the two
    generation = ratios["details"]["generation_peak_fraction_wall_clock"]
    assert generation == pytest.approx({"lmgym-grpo": 0.2, "lmgym-ppo": 0.3})
    assert ratios["details"]["decode_matmul_ceiling_fraction"] == pytest.approx({"lmgym-grpo": 0.4, "lmgym-ppo": 0.5})
    assert ratios["details"]["generation_fraction_of_ceiling"] == pytest.approx({"lmgym-grpo": 0.5, "lmgym-ppo": 0.6})
    # TRL never reaches 0.5: the level becomes the best TRL reaches, 0.34 (steps 5, 6, 7 → its 7th step).
    ttr = ratios["details"]["time_to_reward"]
    assert ttr["level_is"] == "best level both reach" and ttr["level"] == pytest.approx(0.34)
    assert ttr["best_lmgym_side"] == "lmgym-grpo"
    # lmgym GRPO's moving mean at step 5 is 0.34 → 9 + 4·2 = 17 s; TRL's at step 7 → 9 + 6·4 = 33 s.
    assert ratios["time_to_reward_ratio"] == pytest.approx(17.0 / 33.0)
    assert ratios["details"]["score_forwards_per_model_max"] == {"lmgym-grpo": 1, "lmgym-ppo": 1}


def test_settings_round_trip_through_the_command_line() -> None:
    settings = Settings(model="tiny", steps=3, completions=8, micro_batch=4, trainable_layers=None, lr=1e-3)
    parsed, _ = settings_from_argv(settings.cli_args())
    assert parsed == settings
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        Settings(completions=8, micro_batch=3, k=4)


def test_setting_presets() -> None:
    full, _ = settings_from_argv(["--setting", "full", "--steps", "8"])
    assert (full.trainable_layers, full.freeze_embeddings, full.lr, full.steps) == (None, False, 2e-5, 8)
    assert setting_name(full) == "full"
    assert setting_name(settings_from_argv([])[0]) == "top8"  # the defaults are the demo's setting
    given, _ = settings_from_argv(["--setting", "full", "--lr", "1e-4", "--trainable-layers", "4"])
    assert (given.lr, given.trainable_layers, setting_name(given)) == (1e-4, 4, "custom")  # flags win


@needs_trl
def test_all_sides_run_on_the_tiny_model() -> None:
    """Each side in-process (the benchmark runs them in subprocesses): equal steps, rewards, peaks, and the
    ratios computed from them; lmgym's score phase runs at most one forward pass per model."""
    settings = Settings(
        model="tiny",
        steps=2,
        completions=8,
        k=4,
        micro_batch=4,
        new_tokens=4,
        threads=1,
        max_prompt_tokens=128,
        trainable_layers=1,
        matmul_size=256,
    )
    results = {side: run_side(settings, side) for side in ("trl-grpo", "lmgym-grpo", "lmgym-ppo")}
    for side, result in results.items():
        assert len(result["steps"]) == 2, side
        assert all(s["seconds"] > 0 and math.isfinite(s["reward"]) for s in result["steps"]), side
        assert result["peak_rss_mib"] > 0 and result["matmul_peak_gflops"] > 0, side
    # The same trainable parameters on both libraries (the top block; embeddings frozen).
    assert results["trl-grpo"]["trainable_params"] == results["lmgym-grpo"]["trainable_params"]
    assert results["lmgym-ppo"]["trainable_params"] == results["lmgym-grpo"]["trainable_params"] + 65  # value head
    assert results["trl-grpo"]["has_reference"]
    for side in ("lmgym-grpo", "lmgym-ppo"):
        # Generation logits reused: no policy forward in the score phase, one reference forward per batch.
        assert results[side]["score_forwards"] == [{"policy": 0, "reference": 1}] * 2
        assert all(f > 0 for f in results[side]["update_flops"])
        assert len(results[side]["generation_flops"]) == 2 and all(f > 0 for f in results[side]["generation_flops"])
    ratios = compare(results, settings)
    for key in RESULT_KEYS:
        assert key in ratios
    for key in ("grpo_step_ratio", "ppo_step_ratio", "update_peak_fraction", "memory_ratio"):
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    assert all(0 < f < 10 for f in ratios["details"]["generation_peak_fraction_wall_clock"].values())
    assert all(0 < f < 10 for f in ratios["details"]["decode_matmul_ceiling_fraction"].values())
