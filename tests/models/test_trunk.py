"""Frozen-trunk reuse: passes that start from the states kept during generation give the same log-probs,
values and gradients as full passes, and the reference shares (does not copy) the frozen modules."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch, freeze
from lmgym.models.trunk import can_start_from, frozen_depth


def _setup(trainable_layers: int | None, freeze_embeddings: bool = True):
    torch.manual_seed(0)
    loaded = load_model("tiny")
    model = loaded.model
    if trainable_layers is not None and trainable_layers > 2:
        # A deeper tiny Llama, so that several blocks sit below the trainable ones.
        cfg = LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": 4})
        model = LlamaForCausalLM(cfg).eval()
    reference = ReferenceModel(model, is_seq2seq=False)
    freeze(model, freeze_embeddings, trainable_layers)
    shared = reference.share_frozen_trunk(model)
    policy = Policy(model, loaded.tokenizer, is_seq2seq=False)
    with torch.no_grad():  # a non-zero value head, so that values and their gradients are not trivially 0
        policy.value_head.weight.normal_(std=0.1)
    return policy, reference, loaded.tokenizer, shared


def _generate(policy: Policy, tokenizer, keep_trunk: bool) -> TokenBatch:
    enc = tokenizer(["the movie was", "a long story about the director and"], padding=True, return_tensors="pt")
    generation = GenerationConfig(
        do_sample=True, max_new_tokens=6, min_new_tokens=6, top_k=0, pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(1)
    batch, _ = policy.generate_and_score(enc["input_ids"], enc["attention_mask"], generation, keep_trunk=keep_trunk)
    return batch


@pytest.mark.parametrize("trainable_layers", [1, 3])
def test_passes_from_the_kept_trunk_match_full_passes(trainable_layers: int) -> None:
    policy, reference, tokenizer, shared = _setup(trainable_layers)
    depth = frozen_depth(policy.model)
    assert depth == shared == (2 if trainable_layers == 1 else 4) - trainable_layers
    batch = _generate(policy, tokenizer, keep_trunk=True)
    assert batch.trunk is not None and batch.trunk.depth == depth
    assert batch.trunk.states.shape[1] == batch.prompt_ids.shape[1] + batch.gen_ids.shape[1] - 1
    full = TokenBatch(batch.prompt_ids, batch.prompt_mask, batch.gen_ids, batch.gen_mask)  # no kept states
    assert can_start_from(policy.model, batch.trunk) and can_start_from(reference.model, batch.trunk)

    # The frozen bottom block does not run in a pass from the kept states.
    calls = []
    handle = policy.model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    reference.logprobs(batch)
    policy.score(batch)
    assert calls == []
    reference.logprobs(full)
    assert calls == [1]
    handle.remove()

    # Reference log-probs.
    torch.testing.assert_close(reference.logprobs(batch), reference.logprobs(full), atol=1e-5, rtol=1e-5)

    # Policy log-probs, values and gradients (on a sub-batch, as the update takes them).
    idx = torch.tensor([1])
    grads = []
    for b in (batch.index(idx), full.index(idx)):
        policy.zero_grad(set_to_none=True)
        scores = policy.score(b, with_entropy=False)
        (scores.logprobs.sum() + scores.values.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
        grads[-1]["_logprobs"], grads[-1]["_values"] = scores.logprobs.detach(), scores.values.detach()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 2
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_reference_shares_the_frozen_modules_and_stays_the_initial_policy() -> None:
    policy, reference, _, _ = _setup(trainable_layers=1)
    assert reference.model.get_input_embeddings() is policy.model.get_input_embeddings()
    assert reference.model.model.layers[0] is policy.model.model.layers[0]
    assert reference.model.model.layers[1] is not policy.model.model.layers[1]  # the trainable block is a copy
    before = copy.deepcopy(reference.model.model.layers[1].state_dict())
    with torch.no_grad():
        for p in policy.model.model.layers[1].parameters():
            p.add_(1.0)  # training moves the policy's trainable block only
    for key, value in reference.model.model.layers[1].state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_no_trunk_when_nothing_below_is_frozen() -> None:
    policy, _, tokenizer, shared = _setup(trainable_layers=None)
    assert shared == 0 and frozen_depth(policy.model) == 0
    assert _generate(policy, tokenizer, keep_trunk=True).trunk is None
    policy, _, tokenizer, shared = _setup(trainable_layers=1, freeze_embeddings=False)  # embeddings train
    assert shared == 0 and _generate(policy, tokenizer, keep_trunk=True).trunk is None


def test_a_separately_built_model_does_not_take_the_states() -> None:
    policy, _, tokenizer, _ = _setup(trainable_layers=1)
    batch = _generate(policy, tokenizer, keep_trunk=True)
    stranger = copy.deepcopy(policy.model)  # equal weights, but not the modules that computed the states
    assert not can_start_from(stranger, batch.trunk)
