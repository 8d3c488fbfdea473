"""Grouped-query attention without per-head copies of the keys and values on a CPU
(models/grouped_attention.py): lmgym's scoring passes skip ``repeat_kv`` and give the logits of the copying
path bit for bit and its gradients up to rounding; where activation checkpointing acts they keep the copying
path."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.integrations import sdpa_attention

from lmgym.models import policy as policy_module
from lmgym.models.grouped_attention import cpu_grouped_query_attention
from lmgym.models.policy import TokenBatch, checkpointed_blocks, forward_rows, gradient_checkpointing
from lmgym.models.tiny import tiny_model


def _gqa_model() -> LlamaForCausalLM:
    """lmgym's tiny Llama with its 4 query heads sharing 2 key/value heads, with ``sdpa`` attention."""
    config = tiny_model()[0].config
    config.num_key_value_heads = 2
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.set_attn_implementation("sdpa")
    return model.eval()


def _batch(k: int = 3) -> TokenBatch:
    """Two prompts (one left-padded), ``k`` completions each, one completion ended early: packed rows."""
    torch.manual_seed(1)
    prompt_ids = torch.randint(3, 200, (2, 7)).repeat_interleave(k, 0)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[:k, :2] = 0
    gen_mask = torch.ones(2 * k, 5, dtype=torch.long)
    gen_mask[1, 3:] = 0
    return TokenBatch(prompt_ids, prompt_mask, torch.randint(3, 200, (2 * k, 5)), gen_mask)


@pytest.fixture
def repeat_kv_calls(monkeypatch) -> list[int]:
    """How often transformers' sdpa attention copies the keys or values per query head."""
    calls: list[int] = []
    original = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda *a: calls.append(1) or original(*a))
    return calls


def _logits_and_grads(model: LlamaForCausalLM, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    fwd = forward_rows(model, False, batch)
    (fwd.logits.logsumexp(-1) * torch.linspace(-1, 1, fwd.logits.shape[0])).sum().backward()
    return fwd.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_scoring_passes_skip_the_copies_and_match_the_copying_path(repeat_kv_calls: list[int], monkeypatch) -> None:
    model, batch = _gqa_model(), _batch()
    logits, grads = _logits_and_grads(model, batch)
    assert repeat_kv_calls == []  # two layers, keys and values: no copy
    # The copying path: transformers' own choice.
    monkeypatch.setattr(policy_module, "cpu_grouped_query_attention", lambda model: nullcontext())
    copied_logits, copied_grads = _logits_and_grads(model, batch)
    assert len(repeat_kv_calls) == 4
    assert torch.equal(logits, copied_logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, copied_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_activation_checkpointing_keeps_the_copying_path(repeat_kv_calls: list[int]) -> None:
    model, batch = _gqa_model(), _batch()
    plain_logits, plain_grads = _logits_and_grads(model, batch)
    gradient_checkpointing(model)
    with checkpointed_blocks(model, True):
        logits, grads = _logits_and_grads(model, batch)  # the blocks' rerun in backward would refuse other tensors
    assert len(repeat_kv_calls) == 8  # forward and rerun, two layers, keys and values
    assert torch.equal(logits, plain_logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointed_passes_without_gradients_skip_the_copies(repeat_kv_calls: list[int]) -> None:
    """Checkpointing on but not acting (no gradients, as the reference's and the old log-probabilities' passes;
    or the blocks in eval mode): nothing is rerun in a backward pass, so the copies are not needed."""
    model, batch = _gqa_model(), _batch()
    gradient_checkpointing(model)
    with torch.no_grad(), checkpointed_blocks(model, True):
        forward_rows(model, False, batch)
    with torch.no_grad():
        forward_rows(model, False, batch)
    assert repeat_kv_calls == []


def test_the_context_restores_transformers_choice_and_nests() -> None:
    original = sdpa_attention.use_gqa_in_sdpa
    model = _gqa_model()
    key = torch.zeros(1, 2, 3, 8)
    with cpu_grouped_query_attention(model):
        patched = sdpa_attention.use_gqa_in_sdpa
        assert patched(torch.ones(1, 1, 3, 3, dtype=torch.bool), key, key) is True
        with cpu_grouped_query_attention(model):
            assert sdpa_attention.use_gqa_in_sdpa is patched
        assert sdpa_attention.use_gqa_in_sdpa is patched
    assert sdpa_attention.use_gqa_in_sdpa is original
