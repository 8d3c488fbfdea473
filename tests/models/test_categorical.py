"""Inverse-CDF sampling of the next token (models/categorical.py): the distribution torch.multinomial
draws from, zero-probability tokens never, the same draws for a seed, clear errors, and HF generate
sampling through it."""

from __future__ import annotations

import pytest
import torch

from lmgym.errors import TrainingError
from lmgym.models.categorical import inverse_cdf_sampling, sample_categorical


def test_frequencies_match_the_probabilities_and_zeros_are_never_drawn() -> None:
    weights = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.5, 0.0, 2.5, 1e-4, 0.0, 3.0])  # unnormalised, sum 10.0001
    n = 200_000
    draws = sample_categorical(weights.expand(n, -1), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=10).double()
    assert counts[weights == 0].sum() == 0
    expected = weights.double() / weights.double().sum() * n
    sd = (expected * (1 - expected / n)).sqrt()
    assert ((counts - expected).abs() <= 5 * sd + 1).all(), (counts, expected)
    chi2 = float(((counts - expected)[weights > 0] ** 2 / expected[weights > 0]).sum())
    assert chi2 < 25.0  # 5 degrees of freedom: p ≈ 1e-4


def test_each_row_samples_its_own_distribution() -> None:
    rows = torch.eye(5)[torch.tensor([3, 0, 4, 4, 1])]  # one-hot rows: the draw is certain
    assert sample_categorical(rows).tolist() == [3, 0, 4, 4, 1]
    last = torch.zeros(2, 49152)
    last[:, -1] = 1.0  # the last category only: u stays below the total, so it is never out of range
    assert sample_categorical(last).tolist() == [49151, 49151]


def test_the_same_seed_draws_the_same_tokens() -> None:
    probs = torch.softmax(torch.randn(8, 1000, generator=torch.Generator().manual_seed(1)), -1)
    torch.manual_seed(3)
    a = sample_categorical(probs)
    torch.manual_seed(3)
    b = sample_categorical(probs)
    torch.manual_seed(4)
    c = sample_categorical(probs)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_invalid_probabilities_raise_a_clear_error(bad: float) -> None:
    probs = torch.full((2, 4), 0.25)
    probs[1, 2] = bad
    with pytest.raises(TrainingError, match="not finite"):
        sample_categorical(probs)


def test_a_row_of_zeros_raises_a_clear_error() -> None:
    with pytest.raises(TrainingError, match="sums to 0"):
        sample_categorical(torch.zeros(1, 4))


def test_multinomial_is_swapped_only_inside_the_block_and_restored_after_an_error() -> None:
    original = torch.multinomial
    probs = torch.tensor([[0.0, 1.0, 0.0]])
    with pytest.raises(RuntimeError, match="boom"), inverse_cdf_sampling():
        assert torch.multinomial is not original
        with inverse_cdf_sampling():  # nested: still swapped, restored by the outer block only
            pass
        assert torch.multinomial is not original
        assert torch.multinomial(probs, 1).tolist() == [[1]]
        assert torch.multinomial(probs.expand(2, -1), 2, replacement=True).shape == (2, 2)  # passed through
        raise RuntimeError("boom")
    assert torch.multinomial is original


def test_generate_samples_through_it(monkeypatch) -> None:
    """The policy's generation draws every token with sample_categorical (one uniform per row and step),
    and the same seed gives the same completions."""
    import lmgym.models.categorical as categorical
    from lmgym.models.loading import load_model
    from lmgym.models.policy import Policy, make_generation_config
    from lmgym.rollout.sampling import tokenize_prompts

    loaded = load_model("tiny")
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    ids, mask, _ = tokenize_prompts(policy.tokenizer, ["a b", "c d e"], 16)
    generation = make_generation_config(policy.tokenizer, max_new_tokens=5, min_new_tokens=5, do_sample=True, top_k=0)
    calls = []
    real = categorical.sample_categorical
    monkeypatch.setattr(categorical, "sample_categorical", lambda w, g=None: calls.append(w.shape) or real(w, g))
    torch.manual_seed(0)
    first = policy.generate(ids, mask, generation)[0]
    torch.manual_seed(0)
    again = policy.generate(ids, mask, generation)[0]
    assert len(calls) == 10 and all(shape[0] == 2 for shape in calls)
    assert torch.equal(first, again)
