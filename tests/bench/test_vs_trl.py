"""The lmgym-vs-TRL harness: its ratio arithmetic, its FLOP estimate with frozen blocks, and a tiny-model
smoke run of all three sides (skipped without trl)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GenerationConfig

from lmgym.bench.vs_trl import (
    RESULT_KEYS,
    Settings,
    compare,
    moving_means,
    run_side,
    settings_from_argv,
    time_to_level,
    update_flops,
)
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch, freeze

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
    lmgym_extra = {"seconds_update": 1.0}
    trl = {
        "steps": _steps([9.0] + [4.0] * 6, [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4]),  # best moving mean 0.34
        "peak_rss_mib": 1000.0,
        "matmul_peak_gflops": 100.0,
        "matmul_peak_cpu_gflops": 100.0,
    }
    grpo = {
        "steps": _steps([9.0] + [2.0] * 6, [0.0, 0.3, 0.3, 0.5, 0.6, 0.7, 0.7], **lmgym_extra),
        "update_flops": [0.0] + [30e9] * 6,  # 30 GFLOP in 1 s of update = 30% of a 100 GFLOP/s peak
        "update_cpu_seconds": [1.0] * 7,
        "matmul_peak_cpu_gflops": 100.0,
        "score_forwards": [{"policy": 0, "reference": 1}] * 7,
        "peak_rss_mib": 1100.0,
        "matmul_peak_gflops": 100.0,
    }
    ppo = {
        "steps": _steps([9.0] + [3.0] * 6, [0.0] * 7, **lmgym_extra),
        "update_flops": [0.0] + [50e9] * 6,
        "update_cpu_seconds": [1.0] * 7,
        "matmul_peak_cpu_gflops": 100.0,
        "score_forwards": [{"policy": 0, "reference": 1}] * 7,
        "peak_rss_mib": 1200.0,
        "matmul_peak_gflops": 100.0,
    }
    ratios = compare({"trl-grpo": trl, "lmgym-grpo": grpo, "lmgym-ppo": ppo}, settings)
    assert ratios["grpo_step_ratio"] == pytest.approx(0.5)
    assert ratios["ppo_step_ratio"] == pytest.approx(0.75)
    assert ratios["memory_ratio"] == pytest.approx(1.2)
    assert ratios["update_peak_fraction"] == pytest.approx(0.3)  # the lower of the two
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


@pytest.mark.parametrize("trainable_layers", [None, 1])
def test_update_flops_match_the_flop_counter_with_frozen_blocks(trainable_layers: int | None) -> None:
    """The estimate against torch's FLOP counter on one forward+backward of the tiny model (eager attention,
    so that the attention matmuls are counted), with all blocks or only the top one trainable."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    freeze(loaded.model, embeddings=trainable_layers is not None, trainable_layers=trainable_layers)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    B, P, G = 3, 20, 5
    batch = TokenBatch(
        torch.randint(4, 400, (B, P)),
        torch.ones(B, P, dtype=torch.long),
        torch.randint(4, 400, (B, G)),
        torch.ones(B, G, dtype=torch.long),
    )
    counter = FlopCounterMode(display=False)
    with counter:
        scores = policy.score(batch, with_entropy=False)
        (scores.logprobs.sum() + scores.values.sum()).backward()
    value_params = sum(p.numel() for p in policy.value_head.parameters())
    estimate = update_flops(loaded.model, B, P, G, head_positions=G + 1, value_head_params=value_params)
    assert math.isclose(estimate, counter.get_total_flops(), rel_tol=0.03)


def test_update_flops_of_a_pass_from_kept_trunk_states() -> None:
    """Starting from the states kept during generation, the frozen bottom block does not run at all."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    reference = ReferenceModel(loaded.model, is_seq2seq=False)
    freeze(loaded.model, embeddings=True, trainable_layers=1)
    reference.share_frozen_trunk(loaded.model)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    enc = loaded.tokenizer(["the movie was", "a story"], padding=True, return_tensors="pt")
    generation = GenerationConfig(do_sample=True, max_new_tokens=5, min_new_tokens=5, top_k=0, pad_token_id=0)
    batch, _ = policy.generate_and_score(enc["input_ids"], enc["attention_mask"], generation, keep_trunk=True)
    assert batch.trunk is not None and batch.trunk.depth == 1
    counter = FlopCounterMode(display=False)
    with counter:
        scores = policy.score(batch, with_entropy=False)
        (scores.logprobs.sum() + scores.values.sum()).backward()
    B, P = enc["input_ids"].shape
    value_params = sum(p.numel() for p in policy.value_head.parameters())
    estimate = update_flops(
        loaded.model, B, P - 1, 5, head_positions=5, value_head_params=value_params, skipped_blocks=1
    )
    assert math.isclose(estimate, counter.get_total_flops(), rel_tol=0.03)


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
    ratios = compare(results, settings)
    for key in RESULT_KEYS:
        assert key in ratios
    for key in ("grpo_step_ratio", "ppo_step_ratio", "update_peak_fraction", "memory_ratio"):
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
