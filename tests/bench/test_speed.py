"""The speed benchmark on the tiny model: keys, sane numbers, the JSON line, and the FLOP formula."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GenerationConfig

from lmgym.bench.speed import (
    PHASES,
    RESULT_KEYS,
    decode_matmul_ceiling,
    decode_matmul_shapes,
    passes_flops,
    recorded_forward_flops,
    recorded_passes,
    run_speed_benchmark,
    update_flops,
)
from lmgym.environment import machine
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch, freeze


def test_speed_benchmark_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    # One thread: the machine may be shared, and oversubscribed threads make timings meaningless.
    result = run_speed_benchmark(model="tiny", batch=4, new_tokens=6, repeats=1, threads=1)
    assert tuple(result) == RESULT_KEYS
    assert (result["model"], result["batch"], result["new_tokens"], result["threads"]) == ("tiny", 4, 6, 1)
    for key in RESULT_KEYS[4:-1]:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["update_peak_fraction"] > 0
    assert result["machine"] == machine()
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
    # The pass stops before the last generated token (nothing scores it): P + G − 1 tokens, the head at G.
    estimate = update_flops(loaded.model, B, P - 1, G, head_positions=G, value_head_params=value_params)
    assert math.isclose(estimate, counter.get_total_flops(), rel_tol=0.02)


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
    estimate = update_flops(loaded.model, B, P - 1, G, head_positions=G, value_head_params=value_params)
    assert math.isclose(estimate, counter.get_total_flops(), rel_tol=0.03)


def test_pass_flops_without_attention_count_the_weights_products_alone() -> None:
    """``attention=False`` leaves out Q·Kᵀ and A·V (batched products in eager attention): what remains matches
    the counter's plain matrix products."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
    B, P, G = 3, 20, 5
    ones = torch.ones(B, P, dtype=torch.long)
    batch = TokenBatch(torch.randint(4, 400, (B, P)), ones, torch.randint(4, 400, (B, G)), ones[:, :G])
    counter = FlopCounterMode(display=False)
    with counter, recorded_passes(loaded.model) as passes:
        policy.score(batch, with_entropy=False).logprobs.sum().backward()
    counts = counter.get_flop_counts()["Global"]
    products = sum(n for op, n in counts.items() if op in (torch.ops.aten.mm, torch.ops.aten.addmm))
    assert counts[torch.ops.aten.bmm] > 0  # the attention ran, and is left out below
    assert math.isclose(passes_flops(loaded.model, passes, attention=False), products, rel_tol=0.03)
    assert passes_flops(loaded.model, passes) > passes_flops(loaded.model, passes, attention=False)


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


@pytest.mark.parametrize("trainable_layers", [None, 1])
def test_recorded_passes_match_the_flop_counter_when_prompts_are_packed(trainable_layers: int | None) -> None:
    """k completions per prompt: the pass is packed (models/packing.py); the FLOPs of the recorded pass shapes
    against torch's counter (eager attention: its matmuls are counted)."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    freeze(loaded.model, embeddings=trainable_layers is not None, trainable_layers=trainable_layers)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    B, P, G, k = 6, 12, 5, 3
    prompt_ids = torch.randint(4, 400, (B // k, P)).repeat_interleave(k, 0)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[:k, :4] = 0
    batch = TokenBatch(prompt_ids, prompt_mask, torch.randint(4, 400, (B, G)), torch.ones(B, G, dtype=torch.long))
    counter = FlopCounterMode(display=False)
    with counter, recorded_passes(loaded.model) as passes:
        scores = policy.score(batch, with_entropy=False)
        (scores.logprobs.sum() + scores.values.sum()).backward()
    # Two prompts of 8 and 12 tokens, each followed by its 3 completions' first G − 1 tokens: rows of 20 and 24.
    assert [(p.rows, p.seq_len, p.head_outputs) for p in passes] == [(2, 24, 2 * (1 + k * (G - 1)))]
    value_params = sum(p.numel() for p in policy.value_head.parameters())
    estimate = passes_flops(loaded.model, passes, value_params)
    assert math.isclose(estimate, counter.get_total_flops(), rel_tol=0.03)


def test_generation_flops_match_the_flop_counter() -> None:
    """The prefill and every decoding step of a sampled rollout (shared prefill of repeated prompts): the
    recorded forward FLOPs against torch's counter (eager attention: its matmuls are counted)."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    enc = loaded.tokenizer(["the movie was", "a long story about a"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].repeat_interleave(3, 0), enc["attention_mask"].repeat_interleave(3, 0)
    generation = GenerationConfig(do_sample=True, max_new_tokens=6, min_new_tokens=6, top_k=0, pad_token_id=0)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, recorded_forward_flops(loaded.model) as calls:
        policy.generate_and_score(ids, mask, generation)
    assert len(calls) > 6  # a prefill, then a call of the blocks and of the head per generated token
    assert math.isclose(sum(calls), counter.get_total_flops(), rel_tol=0.05)


def test_decode_matmul_shapes_are_the_products_one_token_runs() -> None:
    """The linear shapes behind the generation ceiling account for the FLOPs of a one-token forward pass
    (torch's FLOP counter; the attention of one position adds well under 1%), and the ceiling is a rate."""
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation("eager")
    shapes = decode_matmul_shapes(loaded.model)
    cfg = loaded.model.config
    assert shapes[(cfg.hidden_size, cfg.vocab_size)] == 1  # the LM head
    assert sum(shapes.values()) == 7 * cfg.num_hidden_layers + 1  # q, k, v, o, gate, up, down per block
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        loaded.model(input_ids=torch.tensor([[5]]))
    linear = sum(2 * n_in * n_out * count for (n_in, n_out), count in shapes.items())
    assert math.isclose(linear, counter.get_total_flops(), rel_tol=0.01)
    ceiling = decode_matmul_ceiling(loaded.model, rows=4, min_seconds=0.0)
    assert math.isfinite(ceiling) and ceiling > 0
