"""The batched rollout: shapes, masking, rewards placement and on-policy log-probs."""

from __future__ import annotations

import pytest
import torch

from lmgym.data.registry import load_task
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, ReferenceModel, make_generation_config
from lmgym.rollout.rollout import collect_rollout
from lmgym.rollout.sampling import tokenize_prompts


@pytest.mark.parametrize(
    "name",
    ["tiny", "tiny-seq2seq"],
)
def test_rollout_logprobs_are_reproducible_after_the_rollout(name: str) -> None:
    """Right after a rollout the PPO ratio must be exactly 1: scoring again gives the rollout's log-probs."""
    loaded = load_model(name)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    reference = ReferenceModel(loaded.model, loaded.is_seq2seq)
    task = load_task("toy")
    generation = make_generation_config(loaded.tokenizer, max_new_tokens=8, do_sample=True, top_k=0, temperature=1.0)
    torch.manual_seed(0)
    rollout = collect_rollout(policy, reference, task.reward, task.split("train")[:6], generation, 16)
    with torch.no_grad():
        again = policy.score(rollout.batch).logprobs * rollout.mask
    torch.testing.assert_close(again, rollout.logprobs, atol=1e-5, rtol=0)
    # At initialisation the policy equals the reference.
    torch.testing.assert_close(rollout.ref_logprobs, rollout.logprobs, atol=1e-5, rtol=0)


def test_rollout_fields_are_masked_and_consistent() -> None:
    loaded = load_model("tiny")
    tok = loaded.tokenizer
    policy = Policy(loaded.model, tok, loaded.is_seq2seq)
    reference = ReferenceModel(loaded.model, loaded.is_seq2seq)
    task = load_task("toy", per_token=True)
    samples = task.split("train")[:5]
    generation = make_generation_config(tok, max_new_tokens=6, do_sample=True, top_k=0, temperature=1.0)
    torch.manual_seed(0)
    rollout = collect_rollout(policy, reference, task.reward, samples, generation, max_prompt_tokens=4, temperature=1.3)
    B, G = rollout.batch.gen_ids.shape
    assert B == 5 and G <= 6
    for name in ("logprobs", "ref_logprobs", "values", "entropy", "task_rewards"):
        tensor = getattr(rollout, name)
        assert tensor.shape == (B, G), name
        assert torch.all(tensor[rollout.mask == 0] == 0), name
    assert torch.all(rollout.logprobs[rollout.mask == 1] < 0)
    # Prompts longer than 4 tokens were cut from the left and counted.
    full = [tok(s.prompt)["input_ids"] for s in samples]
    assert rollout.extras["n_truncated"] == sum(len(ids) > 4 for ids in full) > 0
    for i, ids in enumerate(full):
        kept = rollout.batch.prompt_ids[i][rollout.batch.prompt_mask[i].bool()].tolist()
        assert kept == ids[-4:]
    assert rollout.generations == [
        tok.decode(rollout.batch.gen_ids[i, : int(n)], skip_special_tokens=True)
        for i, n in enumerate(rollout.gen_lengths)
    ]
    torch.testing.assert_close(rollout.sample_rewards, rollout.task_rewards.sum(-1))
    assert set(rollout.seconds) == {"generate", "score", "reward"}


def test_tokenize_prompts_pads_left_for_causal() -> None:
    tok = load_model("tiny").tokenizer
    ids, mask, n_truncated = tokenize_prompts(tok, ["the movie was", "a"], max_prompt_tokens=8)
    assert n_truncated == 0
    assert mask.tolist()[1][: ids.shape[1] - 1] == [0] * (ids.shape[1] - 1)
    assert ids[1, -1].item() == tok("a")["input_ids"][-1]
    assert torch.all(ids[mask == 0] == tok.pad_token_id)
