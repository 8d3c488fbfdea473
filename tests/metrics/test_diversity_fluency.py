"""Diversity measures and perplexity, against hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lmgym.metrics.diversity import distinct_n, msttr
from lmgym.models.tiny import tiny_model
from lmgym.rewards.catalog import load_metric


def diversity(texts, **options):
    n = len(texts)
    return load_metric("diversity", **options)([""] * n, texts, [[]] * n, [{}] * n)


def test_diversity_by_hand() -> None:
    # Tokens "a b a" + "b c": unigram counts a2 b2 c1; bigrams (a b), (b a), (b c) once each.
    result = diversity(["a b a", "B c"])
    assert result["distinct-1"].corpus == pytest.approx(3 / 5)
    assert result["entropy-1"].corpus == pytest.approx(-(2 * 0.4 * math.log2(0.4) + 0.2 * math.log2(0.2)))
    assert result["unique-1"].corpus == 1  # only "c" occurs once
    assert result["vocab-size"].corpus == 3
    assert result["distinct-2"].corpus == pytest.approx(1.0)
    assert result["entropy-2"].corpus == pytest.approx(math.log2(3))
    assert result["unique-2"].corpus == 3
    # Per sample: "a b a" alone has 2 distinct of 3 unigrams.
    assert result["distinct-1"].per_sample == pytest.approx([2 / 3, 1.0])
    assert result["msttr"].per_sample is None
    assert set(result) == {
        "msttr", "distinct-1", "distinct-2", "entropy-1", "entropy-2", "unique-1", "unique-2", "vocab-size"
    }  # fmt: skip


def test_msttr_by_hand_and_consistency() -> None:
    texts = ["a b a", "b c"]
    assert msttr(texts, window=2) == pytest.approx(1.0)  # segments [a b] [a b]; the leftover "c" is dropped
    assert msttr(texts, window=3) == pytest.approx(2 / 3)  # one full segment [a b a]
    assert diversity(texts, window=3)["msttr"].corpus == pytest.approx(2 / 3)
    assert msttr(texts, window=100) == pytest.approx(3 / 5)  # shorter than a window: the plain type-token ratio
    # A one-sample corpus scores as its sample, and the trainer's distinct-n agrees with the metric.
    one = diversity(["the cat and the dog and the cat"])
    for key in ("distinct-1", "distinct-2", "entropy-1", "unique-1", "vocab-size"):
        assert one[key].per_sample[0] == pytest.approx(one[key].corpus)
    assert one["distinct-2"].corpus == pytest.approx(distinct_n(["the cat and the dog and the cat"], 2))


@pytest.fixture(scope="module")
def tiny_lm():
    model, tok = tiny_model()
    return model.eval(), tok


def hf_perplexity(model, tok, context: str, text: str) -> float:
    """Perplexity from transformers' own loss: BOS + context unscored (-100), text scored."""
    ctx = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
    txt = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + txt])
    labels = torch.tensor([[-100] * len(ctx) + txt])
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=labels).loss))


def test_perplexity_matches_transformers_loss_with_padding(tiny_lm) -> None:
    model, tok = tiny_lm
    prompts = ["the movie was", "i", "a long prompt about the film and its cast"]
    gens = [" really good", " loved this film very much", " bad"]
    metric = load_metric("perplexity", model=model, tokenizer=tok, batch_size=3)
    result = metric(prompts, gens, [[]] * 3, [{}] * 3)["perplexity"]
    expected = [hf_perplexity(model, tok, p, g) for p, g in zip(prompts, gens, strict=True)]
    assert result.per_sample == pytest.approx(expected, rel=1e-4)
    # Corpus: exp of the token-weighted mean NLL.
    counts = [len(tok(g, add_special_tokens=False)["input_ids"]) for g in gens]
    pooled = math.exp(sum(c * math.log(p) for c, p in zip(counts, expected, strict=True)) / sum(counts))
    assert result.corpus == pytest.approx(pooled, rel=1e-4)


def test_uniform_model_has_perplexity_of_vocabulary_size(tiny_lm) -> None:
    model, tok = tiny_lm
    uniform = copy.deepcopy(model)
    with torch.no_grad():
        uniform.lm_head.weight.zero_()  # all logits 0: every token has probability 1/V
    metric = load_metric("perplexity", model=uniform, tokenizer=tok, target="references")
    result = metric(["the film"], ["ignored"], [["was good", "was bad fun"]], [{}])["perplexity"]
    assert result.per_sample[0] == pytest.approx(uniform.config.vocab_size, rel=1e-5)
    assert result.corpus == pytest.approx(uniform.config.vocab_size, rel=1e-5)


def test_seq2seq_perplexity_matches_transformers_loss() -> None:
    model, tok = tiny_model(seq2seq=True)
    model.eval()
    prompts, gens = ["the movie", "a film about a very long day"], [" was fun", " bad"]
    result = load_metric("perplexity", model=model, tokenizer=tok)(prompts, gens, [[]] * 2, [{}] * 2)
    expected = []
    for p, g in zip(prompts, gens, strict=True):
        enc = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        labels = torch.tensor([[*tok(g, add_special_tokens=False)["input_ids"], tok.eos_token_id]])
        with torch.no_grad():
            expected.append(math.exp(float(model(input_ids=enc, labels=labels).loss)))
    assert result["perplexity"].per_sample == pytest.approx(expected, rel=1e-4)
