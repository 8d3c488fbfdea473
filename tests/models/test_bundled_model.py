"""The bundled SmolLM2 alias (slow: loads the 135M model)."""

import pytest
import torch

from lmgym.models.loading import SMOLLM2_ALIAS, bundled_smollm2_path, load_model
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch, make_generation_config

pytestmark = pytest.mark.slow


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
