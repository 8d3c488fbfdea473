"""One prefill per distinct prompt: the same samples, scores and kept trunk states as one prefill per row,
with the prompt run through the model once per distinct prompt."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, freeze
from lmgym.models.prefill import distinct_rows


def test_distinct_rows() -> None:
    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    first, inverse = distinct_rows(ids, mask)
    assert torch.equal(ids[first][inverse], ids)
    assert sorted(first.tolist()) == [0, 2]
    assert distinct_rows(ids[1:3], mask[1:3]) is None  # all distinct
    mask2 = mask.clone()
    mask2[1, 0] = 1  # same ids, other mask: another prompt
    assert len(distinct_rows(ids, mask2)[0]) == 3


def test_shared_prefill_gives_the_same_samples_and_scores() -> None:
    torch.manual_seed(0)
    loaded = load_model("tiny")
    freeze(loaded.model, embeddings=True, trainable_layers=1)  # the kept trunk states are compared too
    policy = Policy(loaded.model, loaded.tokenizer, is_seq2seq=False)
    with torch.no_grad():
        policy.value_head.weight.normal_(std=0.1)
    prompts = [p for p in ("the movie was", "a long story about the director and") for _ in range(3)]
    enc = loaded.tokenizer(prompts, padding=True, return_tensors="pt")
    generation = GenerationConfig(
        do_sample=True, max_new_tokens=6, min_new_tokens=6, top_k=0, pad_token_id=loaded.tokenizer.pad_token_id
    )
    rows_seen: list[int] = []
    handle = policy.model.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: rows_seen.append((args[0] if args else kwargs["hidden_states"]).shape[:2]),
        with_kwargs=True,
    )
    out = {}
    for share in (False, True):
        rows_seen.clear()
        torch.manual_seed(1)
        out[share] = policy.generate_and_score(
            enc["input_ids"], enc["attention_mask"], generation, keep_trunk=True, share_prefill=share
        )
        out[f"rows-{share}"] = list(rows_seen)
    handle.remove()
    (plain, plain_scores), (shared, shared_scores) = out[False], out[True]
    assert torch.equal(plain.gen_ids, shared.gen_ids)
    torch.testing.assert_close(shared_scores.logprobs, plain_scores.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_scores.values, plain_scores.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.trunk.states, plain.trunk.states, atol=1e-5, rtol=1e-5)
    P = enc["input_ids"].shape[1]
    assert out["rows-False"][0] == (6, P)  # every row prefilled
    assert out["rows-True"][0] == (2, P - 1)  # each distinct prompt once (its last token comes with generate)
    assert out["rows-True"][1] == (6, 1)
