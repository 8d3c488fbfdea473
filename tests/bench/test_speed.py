"""The speed benchmark on the tiny model: keys, sane numbers, the JSON line, and the FLOP formula."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmgym.bench.speed import PHASES, RESULT_KEYS, model_shape, run_speed_benchmark, update_flops
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, TokenBatch


def test_speed_benchmark_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    # One thread: the machine may be shared, and oversubscribed threads make timings meaningless.
    result = run_speed_benchmark(model="tiny", batch=4, new_tokens=6, repeats=1, threads=1)
    assert tuple(result) == RESULT_KEYS
    assert (result["model"], result["batch"], result["new_tokens"], result["threads"]) == ("tiny", 4, 6, 1)
    for key in RESULT_KEYS[4:]:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["update_peak_fraction"] > 0
    phases = sum(result[f"seconds_{p}"] for p in PHASES)
    total = result["seconds_total"]  # wall time of the iteration: the phases plus a little bookkeeping
    assert phases <= total * (1 + 1e-9)
    assert total - phases <= 0.2 * total + 0.02
    assert math.isclose(result["generated_tokens_per_s"], 4 * 6 / total)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result
    assert any("update" in line for line in lines[:-1])


def test_update_flops_matches_flop_counter() -> None:
    """The analytic estimate against torch's FLOP counter on one forward+backward (eager attention, so the
    attention matmuls are visible to the counter)."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    B, P, G = 3, 20, 5
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :4] = 0
    batch = TokenBatch(
        torch.randint(4, 400, (B, P)), prompt_mask, torch.randint(4, 400, (B, G)), torch.ones(B, G, dtype=torch.long)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        scores = policy.score(batch, with_entropy=False)
        (scores.logprobs.sum() + scores.values.sum()).backward()
    value_params = sum(p.numel() for p in policy.value_head.parameters())
    estimate = update_flops(
        model_shape(loaded.model, False), B, P, G, head_positions=G + 1, value_head_params=value_params
    )
    assert math.isclose(estimate, counter.get_total_flops(), rel_tol=0.02)
