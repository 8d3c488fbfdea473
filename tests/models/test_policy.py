"""Policy scoring against a slow token-by-token reference, masks, values, reference model, generation."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

from lmgym.errors import InputError
from lmgym.models.loading import LoadedModel, load_model, prepare_tokenizer
from lmgym.models.policy import (
    Policy,
    ReferenceModel,
    TokenBatch,
    generation_mask,
    make_generation_config,
)
from lmgym.models.tiny import tiny_tokenizer
from lmgym.rollout.sampling import tokenize_prompts

PROMPTS = [
    "the movie",
    "I watched a film last night and the story was",
    "a",
    "she loved the music but the ending was too slow and the",
]


def build(name: str) -> LoadedModel:
    """The bundled tiny models, plus a tiny GPT-2: Llama's rotary positions are blind to the uniform shift
    that left padding causes, GPT-2's absolute position embeddings are not, so only it checks position ids."""
    if name != "tiny-gpt2":
        return load_model(name)
    tok = tiny_tokenizer()
    prepare_tokenizer(tok, is_seq2seq=False)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    return LoadedModel(model=model, tokenizer=tok, is_seq2seq=False, source=name)


@pytest.fixture(scope="module", params=["tiny", "tiny-seq2seq", "tiny-gpt2"])
def loaded(request: pytest.FixtureRequest) -> LoadedModel:
    return build(request.param)


def make_batch(loaded: LoadedModel, gen_len: int = 6) -> TokenBatch:
    """Prompts of different lengths; generated tokens with an EOS mid-way in two rows, pad after it."""
    tok = loaded.tokenizer
    prompt_ids, prompt_mask, _ = tokenize_prompts(tok, PROMPTS, max_prompt_tokens=64)
    gen = torch.Generator().manual_seed(3)
    gen_ids = torch.randint(len(tok.all_special_ids), len(tok), (len(PROMPTS), gen_len), generator=gen)
    gen_ids[1, 2] = tok.eos_token_id  # ends after 3 tokens
    gen_ids[1, 3:] = tok.pad_token_id
    gen_ids[2, 0] = tok.eos_token_id  # ends at once
    gen_ids[2, 1:] = tok.pad_token_id
    gen_mask = generation_mask(gen_ids, tok.eos_token_id, tok.pad_token_id)
    return TokenBatch(prompt_ids, prompt_mask, gen_ids, gen_mask)


def slow_logprobs(loaded: LoadedModel, prompt: str, gen: list[int], temperature: float) -> list[float]:
    """Run the HF model on each prefix separately (no padding, no cache) and read off the next token's log-prob."""
    model, tok = loaded.model, loaded.tokenizer
    prompt_ids = tok(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for t, token in enumerate(gen):
            if loaded.is_seq2seq:
                decoder = [model.config.decoder_start_token_id, *gen[:t]]
                logits = model(input_ids=torch.tensor([prompt_ids]), decoder_input_ids=torch.tensor([decoder])).logits[
                    0, -1
                ]
            else:
                logits = model(input_ids=torch.tensor([prompt_ids + gen[:t]])).logits[0, -1]
            out.append(float(torch.log_softmax(logits.double() / temperature, -1)[token]))
    return out


def test_prompts_are_padded_on_the_right_side(loaded: LoadedModel) -> None:
    batch = make_batch(loaded)
    lengths = [len(loaded.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert len(set(lengths)) == len(lengths)  # really different lengths
    assert batch.prompt_mask.sum(-1).tolist() == lengths
    pad_side = "right" if loaded.is_seq2seq else "left"
    assert loaded.tokenizer.padding_side == pad_side
    shortest = lengths.index(min(lengths))
    column = -1 if pad_side == "right" else 0
    assert batch.prompt_mask[shortest, column] == 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_matches_token_by_token_reference(loaded: LoadedModel, temperature: float) -> None:
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    batch = make_batch(loaded)
    with torch.no_grad():
        scores = policy.score(batch, temperature=temperature)
    assert scores.logprobs.shape == batch.gen_ids.shape
    for i, prompt in enumerate(PROMPTS):
        n = int(batch.gen_mask[i].sum())
        expected = slow_logprobs(loaded, prompt, batch.gen_ids[i, :n].tolist(), temperature)
        got = scores.logprobs[i, :n].double()
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)
    # Entropy: non-negative and at most log V; the full distribution is kept when asked for.
    V = len(loaded.tokenizer)
    assert torch.all(scores.entropy >= -1e-5) and torch.all(scores.entropy <= torch.log(torch.tensor(V)) + 1e-4)
    with torch.no_grad():
        kept = policy.score(batch, temperature=temperature, keep_logits=True, with_values=False, with_entropy=False)
    assert kept.logits.shape == (*batch.gen_ids.shape, V)
    assert kept.values is None and kept.entropy is None
    torch.testing.assert_close(kept.logprobs, scores.logprobs)


def test_generation_mask_semantics() -> None:
    eos, pad = 1, 0
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0], [4, 4, 4, 1]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(generation_mask(ids, eos, pad), expected)
    # Several EOS ids: the first of any of them ends the sequence.
    ids2 = torch.tensor([[5, 2, 1, 9], [5, 6, 1, 2]])
    assert torch.equal(generation_mask(ids2, [1, 2], pad), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    # No EOS configured: the first pad ends it.
    ids3 = torch.tensor([[5, 0, 0], [5, 6, 7]])
    assert torch.equal(generation_mask(ids3, None, 0), torch.tensor([[1, 1, 0], [1, 1, 1]]))


def test_values_shape_and_value_head_modes(loaded: LoadedModel) -> None:
    batch = make_batch(loaded)
    shared = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="shared")
    assert shared.critic is None and shared.has_values
    with torch.no_grad():
        values = shared.score(batch).values
    assert values.shape == batch.gen_ids.shape and torch.isfinite(values).all()

    fresh = build(loaded.source)  # own weights: this test edits them
    separate = Policy(fresh.model, fresh.tokenizer, fresh.is_seq2seq, value_head="separate")
    assert separate.critic is not None and separate.critic is not separate.model
    policy_params = {id(p) for p in separate.model.parameters()}
    assert not policy_params & {id(p) for p in separate.critic.parameters()}
    assert {id(p) for p in separate.critic.parameters()} <= {id(p) for p in separate.parameters()}  # optimised too
    with torch.no_grad():
        separate.value_head.weight.normal_()  # the head may start at zero; give it something to read
        before = separate.score(batch)
        assert before.values.shape == batch.gen_ids.shape and before.values.abs().sum() > 0
        for p in separate.model.parameters():  # the actor changes: log-probs move, values do not
            p.add_(0.05 * torch.randn_like(p))
        actor_moved = separate.score(batch)
        for p in separate.critic.parameters():  # the critic changes: values move, log-probs do not
            p.add_(0.05 * torch.randn_like(p))
        critic_moved = separate.score(batch)
    assert not torch.allclose(actor_moved.logprobs, before.logprobs, atol=1e-3)
    torch.testing.assert_close(actor_moved.values, before.values)
    torch.testing.assert_close(critic_moved.logprobs, actor_moved.logprobs)
    assert not torch.allclose(critic_moved.values, actor_moved.values, atol=1e-3)

    none = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
    assert not none.has_values
    with torch.no_grad():
        assert none.score(batch).values is None
    with pytest.raises(ValueError, match="value_head"):
        Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="twin")


def test_reference_model_is_frozen_copy(loaded: LoadedModel) -> None:
    fresh = build(loaded.source)  # own weights: this test edits them
    policy = Policy(fresh.model, fresh.tokenizer, fresh.is_seq2seq)
    reference = ReferenceModel(fresh.model, fresh.is_seq2seq)
    assert all(not p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in policy.model.parameters())
    batch = make_batch(fresh)
    with torch.no_grad():
        policy_lp = policy.score(batch, temperature=0.9).logprobs
    ref_lp = reference.logprobs(batch, temperature=0.9)
    assert not ref_lp.requires_grad
    torch.testing.assert_close(ref_lp, policy_lp, atol=1e-6, rtol=0)
    # Training the policy leaves the reference where it was.
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        moved = policy.score(batch).logprobs
    assert not torch.allclose(moved, policy_lp, atol=1e-3)
    torch.testing.assert_close(reference.logprobs(batch, temperature=0.9), ref_lp)


class ForceEOS(LogitsProcessor):
    """Makes row ``row`` emit EOS at generation step ``step`` (counted from 0)."""

    def __init__(self, eos: int, start_len: int, row: int, step: int) -> None:
        self.eos, self.start_len, self.row, self.step = eos, start_len, row, step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.start_len == self.step:
            scores[self.row] = -float("inf")
            scores[self.row, self.eos] = 0.0
        return scores


def test_generate_returns_tokens_and_matching_mask(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    policy = Policy(loaded.model, tok, loaded.is_seq2seq)
    prompt_ids, prompt_mask, _ = tokenize_prompts(tok, PROMPTS, max_prompt_tokens=64)
    config = make_generation_config(tok, max_new_tokens=7, do_sample=True, top_k=0, temperature=1.0)
    start_len = 1 if loaded.is_seq2seq else prompt_ids.shape[1]
    force = LogitsProcessorList([ForceEOS(tok.eos_token_id, start_len, row=1, step=2)])
    torch.manual_seed(0)
    gen_ids, gen_mask = policy.generate(prompt_ids, prompt_mask, config, force)
    assert gen_ids.shape[0] == len(PROMPTS) and gen_ids.shape[1] <= 7
    assert torch.equal(gen_mask, generation_mask(gen_ids, tok.eos_token_id, tok.pad_token_id))
    assert gen_mask[1].tolist()[:3] == [1, 1, 1] and gen_mask[1, 3:].sum() == 0
    assert gen_ids[1, 2] == tok.eos_token_id
    assert torch.all(gen_ids[1, 3:] == tok.pad_token_id)
    assert gen_mask.dtype == torch.long and set(gen_mask.unique().tolist()) <= {0, 1}
    # Each row's mask is a prefix of ones.
    assert torch.all(gen_mask[:, 1:] <= gen_mask[:, :-1])
    # The same seed gives the same sample.
    torch.manual_seed(0)
    again, _ = policy.generate(prompt_ids, prompt_mask, config, force)
    assert torch.equal(again, gen_ids)


@pytest.mark.parametrize("setting", [{"num_return_sequences": 2}, {"num_beams": 2, "do_sample": False}])
def test_generate_and_score_refuses_several_sequences_per_prompt_row(loaded: LoadedModel, setting: dict) -> None:
    # Its batch keeps one row per prompt row: k sequences per row would misalign prompts, tokens and scores.
    tok = loaded.tokenizer
    policy = Policy(loaded.model, tok, loaded.is_seq2seq)
    prompt_ids, prompt_mask, _ = tokenize_prompts(tok, PROMPTS, max_prompt_tokens=64)
    config = make_generation_config(tok, max_new_tokens=3, **({"do_sample": True, "top_k": 0} | setting))
    with pytest.raises(InputError, match="repeat each prompt row"):
        policy.generate_and_score(prompt_ids, prompt_mask, config)
    gen_ids, _ = policy.generate(prompt_ids, prompt_mask, config)  # plain generation returns them all
    assert gen_ids.shape[0] == len(PROMPTS) * setting.get("num_return_sequences", 1)
