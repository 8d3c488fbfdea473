"""The tiny test models: deterministic, offline, and a tokenizer that suits the toy tasks."""

from __future__ import annotations

import pytest
import torch

from lmgym.models.loading import load_model
from lmgym.models.tiny import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("seq2seq", [False, True])
def test_tiny_models_are_deterministic(seq2seq: bool) -> None:
    a, tok_a = tiny_model(seq2seq=seq2seq)
    b, tok_b = tiny_model(seq2seq=seq2seq)
    c, _ = tiny_model(seq2seq=seq2seq, seed=1)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.is_encoder_decoder is seq2seq


def test_load_model_prepares_tokenizer() -> None:
    causal, seq2seq = load_model("tiny"), load_model("tiny-seq2seq")
    assert (causal.is_seq2seq, seq2seq.is_seq2seq) == (False, True)
    assert causal.tokenizer.padding_side == "left" and seq2seq.tokenizer.padding_side == "right"
    assert causal.tokenizer.truncation_side == "left"
    assert causal.model.config.pad_token_id == causal.tokenizer.pad_token_id
    text = " the movie was fun"
    assert causal.tokenizer.decode(causal.tokenizer(text)["input_ids"]) == text


def test_toy_target_is_one_token() -> None:
    tok = tiny_tokenizer()
    assert len(tok(" the")["input_ids"]) == 1  # the toy task's default target
