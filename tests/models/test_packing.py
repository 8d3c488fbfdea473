"""Packed scoring passes (models/packing.py): a prompt shared by k completions runs once, and the log-probs,
entropies, values and gradients equal those of the row-per-completion pass; the layout itself; and the
fused log-prob/entropy reduction (models/logprobs.py) against log_softmax."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from lmgym.models import policy as policy_module
from lmgym.models.loading import load_model
from lmgym.models.logprobs import token_logprobs
from lmgym.models.packing import pack
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch, forward_rows, freeze


def _batch(B: int = 8, P: int = 12, G: int = 5, k: int = 4) -> TokenBatch:
    """k completions per prompt, prompts of different lengths (left-padded), one completion ended early."""
    torch.manual_seed(0)
    prompt_ids = torch.randint(4, 400, (B // k, P)).repeat_interleave(k, 0)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[:k, :5] = 0
    prompt_mask[k:, :2] = 0
    prompt_ids[prompt_mask == 0] = 0
    gen_mask = torch.ones(B, G, dtype=torch.long)
    gen_mask[1, 3:] = 0
    return TokenBatch(prompt_ids, prompt_mask, torch.randint(4, 400, (B, G)), gen_mask)


def _policy(attention: str = "sdpa", trainable_layers: int | None = None) -> tuple[Policy, ReferenceModel]:
    torch.manual_seed(0)
    loaded = load_model("tiny")
    loaded.model.set_attn_implementation(attention)
    reference = ReferenceModel(loaded.model, is_seq2seq=False)
    freeze(loaded.model, trainable_layers is not None, trainable_layers)
    reference.share_frozen_trunk(loaded.model)
    policy = Policy(loaded.model, loaded.tokenizer, is_seq2seq=False)
    with torch.no_grad():
        policy.value_head.weight.normal_(std=0.1)
    return policy, reference


def _scores_and_grads(policy: Policy, batch: TokenBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    policy.zero_grad(set_to_none=True)
    scores = policy.score(batch, with_entropy=True)
    mask = batch.gen_mask.float()
    ((scores.logprobs + scores.values + 0.1 * scores.entropy) * mask).sum().backward()
    grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
    return [scores.logprobs * mask, scores.values * mask, scores.entropy * mask], grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_passes_match_row_per_completion_passes(attention: str, monkeypatch) -> None:
    policy, _ = _policy(attention)
    batch = _batch()
    calls = []
    policy_module_pack = policy_module.pack
    monkeypatch.setattr(policy_module, "pack", lambda *a, **kw: calls.append(1) or policy_module_pack(*a, **kw))
    packed_scores, packed_grads = _scores_and_grads(policy, batch)
    assert calls, "the batch was not packed"
    monkeypatch.setattr(policy_module, "can_pack", lambda *_: False)
    plain_scores, plain_grads = _scores_and_grads(policy, batch)
    for a, b in zip(packed_scores, plain_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(packed_grads) == len(plain_grads)
    for a, b in zip(packed_grads, plain_grads, strict=True):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()) + 1e-7


def test_packed_passes_from_kept_trunk_states_match(monkeypatch) -> None:
    """Top block trainable: generation keeps the frozen bottom's states, and the packed pass starts from them."""
    policy, reference = _policy(trainable_layers=1)
    tokenizer = policy.tokenizer
    enc = tokenizer(["the movie was", "a long story about"], padding=True, return_tensors="pt")
    prompt_ids, prompt_mask = enc["input_ids"].repeat_interleave(3, 0), enc["attention_mask"].repeat_interleave(3, 0)
    generation = GenerationConfig(do_sample=True, max_new_tokens=5, min_new_tokens=5, top_k=0, pad_token_id=0)
    torch.manual_seed(1)
    batch, _ = policy.generate_and_score(prompt_ids, prompt_mask, generation, keep_trunk=True)
    assert batch.trunk is not None
    packed_scores, packed_grads = _scores_and_grads(policy, batch)
    packed_ref = reference.logprobs(batch)
    monkeypatch.setattr(policy_module, "can_pack", lambda *_: False)
    plain = TokenBatch(batch.prompt_ids, batch.prompt_mask, batch.gen_ids, batch.gen_mask)  # full passes
    plain_scores, plain_grads = _scores_and_grads(policy, plain)
    for a, b in zip(packed_scores, plain_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(packed_grads, plain_grads, strict=True):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()) + 1e-7
    torch.testing.assert_close(packed_ref, reference.logprobs(plain), rtol=1e-5, atol=1e-5)


def test_the_packed_layout() -> None:
    batch = _batch(B=6, P=6, G=3, k=3)
    layout = pack(batch.prompt_ids, batch.prompt_mask, batch.gen_ids, batch.gen_mask, "sdpa")
    # Prompts of 1 and 4 real tokens, each followed by its 3 completions' first 2 tokens: 7 and 10 positions,
    # first-fit into rows of the longest (10): one row each.
    assert layout.input_ids.shape == (2, 10)
    assert layout.rows.shape == (6, 3)
    # The first token of every completion of a prompt is scored at that prompt's last position.
    assert len(set(layout.rows[:3, 0].tolist())) == 1 and len(set(layout.rows[3:, 0].tolist())) == 1
    assert int(layout.keep.sum()) == 2 * (1 + 3 * 2)
    # Row 0 holds the longer prompt (4 tokens at positions 0-3), then its completions' tokens, 2 each.
    mask, positions = layout.attention_mask[0, 0], layout.position_ids[0]
    assert positions.tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5]  # each completion continues the prompt
    first, second = 4, 6  # the first tokens of the first two completions
    assert mask[second, 3] and mask[first, first] and not mask[second, first]  # a completion never sees another
    assert not mask[2, 3]  # causal within the prompt


def test_all_distinct_prompts_are_not_packed() -> None:
    batch = _batch(B=4, k=1)
    assert pack(batch.prompt_ids, batch.prompt_mask, batch.gen_ids, batch.gen_mask, "sdpa") is None


def test_forward_rows_drops_left_padding_every_row_has() -> None:
    policy, _ = _policy()
    batch = _batch(B=4, k=1)
    padded = TokenBatch(
        torch.cat([torch.zeros(4, 3, dtype=torch.long), batch.prompt_ids], dim=1),
        torch.cat([torch.zeros(4, 3, dtype=torch.long), batch.prompt_mask], dim=1),
        batch.gen_ids,
        batch.gen_mask,
    )
    seen = []
    handle = policy.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape), with_kwargs=True
    )
    with torch.no_grad():
        a, b = forward_rows(policy.model, False, padded), forward_rows(policy.model, False, batch)
    handle.remove()
    assert seen[0] == seen[1] == (4, 12 - 2 + 5 - 1)  # 2 columns of padding every row has, and the last token
    torch.testing.assert_close(a.logits, b.logits)


def test_token_logprobs_match_log_softmax_with_shared_rows() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(7, 50) * 3).requires_grad_()
    rows, tokens = torch.randint(0, 7, (3, 4)), torch.randint(0, 50, (3, 4))
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    logprobs, entropy = token_logprobs(logits, tokens, rows, with_entropy=True)
    (logprobs * a + entropy * b).sum().backward()
    fused = logits.grad.clone()
    logits.grad = None
    logp = torch.log_softmax(logits, -1)
    expected_lp, expected_h = logp[rows, tokens], -(logp.exp() * logp).sum(-1)[rows]
    (expected_lp * a + expected_h * b).sum().backward()
    torch.testing.assert_close(logprobs, expected_lp)
    torch.testing.assert_close(entropy, expected_h)
    torch.testing.assert_close(fused, logits.grad)
    logits.grad = None
    logprobs, entropy = token_logprobs(logits, tokens, rows)
    assert entropy is None
    (logprobs * a).sum().backward()
    fused = logits.grad.clone()
    logits.grad = None
    (torch.log_softmax(logits, -1)[rows, tokens] * a).sum().backward()
    torch.testing.assert_close(fused, logits.grad)


@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_of_bf16_logits(with_entropy: bool) -> None:
    """bf16 logits (autocast) take the general path, with or without an entropy gradient."""
    torch.manual_seed(0)
    logits = (torch.randn(5, 40) * 3).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 40, (5,))
    logprobs, entropy = token_logprobs(logits, tokens, with_entropy=with_entropy)
    (logprobs.sum() + (entropy.sum() if with_entropy else 0)).backward()
    fused = logits.grad.float().clone()
    logits.grad = None
    logp = torch.log_softmax(logits.float(), -1)
    expected = logp[torch.arange(5), tokens].sum() + ((-(logp.exp() * logp).sum(-1)).sum() if with_entropy else 0)
    expected.backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused, logits.grad.float(), rtol=2e-2, atol=2e-2)
