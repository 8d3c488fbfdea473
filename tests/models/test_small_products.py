"""Decoding's few-row products computed as W·xᵀ (models/small_products.py): the same values as F.linear, the
other orientation only where it was chosen (few float32 CPU rows), nn.Linear restored after the block, and
generation going through it with the same tokens as plain products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmgym.models.small_products as small_products
from lmgym.models.small_products import MAX_ROWS, product, transposed_small_products


@pytest.fixture
def mm_calls(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the weight-first products that `product` hands to torch.mm / torch.addmm."""
    calls: list[tuple[int, ...]] = []
    for name in ("mm", "addmm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, real=real, **k: calls.append(tuple(a[-1].shape)) or real(*a, **k))
    return calls


@pytest.mark.parametrize("rows", [1, 2, 5, 11, 12, 32, MAX_ROWS])
@pytest.mark.parametrize("bias", [False, True])
def test_values_equal_f_linear_up_to_rounding(rows: int, bias: bool, mm_calls) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(300, 96, generator=gen)
    b = torch.randn(300, generator=gen) if bias else None
    x = torch.randn(rows, 1, 96, generator=gen)  # [batch, one new token, features], as a decoding step
    out = product(x, weight, b)
    assert out.shape == (rows, 1, 300) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    assert mm_calls == [(96, rows)]  # it did take the transposed product


def test_larger_products_and_other_dtypes_keep_f_linear(mm_calls) -> None:
    weight = torch.randn(40, 16)
    many = torch.randn(MAX_ROWS + 1, 16)
    assert torch.equal(product(many, weight), F.linear(many, weight))
    doubles = torch.randn(4, 16, dtype=torch.float64)
    assert torch.equal(product(doubles, weight.double()), F.linear(doubles, weight.double()))
    assert product(torch.empty(0, 16), weight).shape == (0, 40)
    assert mm_calls == []


def test_linear_is_swapped_only_inside_the_block_and_restored_after_an_error() -> None:
    original = nn.Linear.forward
    layer = nn.Linear(8, 3)
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="boom"), transposed_small_products():
        assert nn.Linear.forward is not original
        with transposed_small_products():  # nested: still swapped, restored by the outer block only
            pass
        assert nn.Linear.forward is not original
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        raise RuntimeError("boom")
    assert nn.Linear.forward is original


def test_generation_decodes_through_it_with_the_same_logits_and_tokens(monkeypatch, mm_calls) -> None:
    """16 rows: with MKL the two orientations agree bit for bit from 12 rows up, so a decoding step's logits are
    the same and the same seed draws the same tokens (another BLAS: equal up to rounding)."""
    from lmgym.models.loading import load_model
    from lmgym.models.policy import Policy, make_generation_config
    from lmgym.rollout.sampling import tokenize_prompts

    loaded = load_model("tiny")
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq)
    prompts = [f"w{i} w{i + 1} w{i + 2}" for i in range(16)]
    ids, mask, _ = tokenize_prompts(policy.tokenizer, prompts, 16)
    generation = make_generation_config(policy.tokenizer, max_new_tokens=6, min_new_tokens=6, do_sample=True, top_k=0)
    torch.manual_seed(0)
    transposed = policy.generate(ids, mask, generation)[0]
    linears = sum(isinstance(m, nn.Linear) for m in policy.model.modules())
    assert sum(shape[-1] == 16 for shape in mm_calls) >= 5 * linears  # every layer of every decoding step
    monkeypatch.setattr(small_products, "MAX_ROWS", 0)  # plain F.linear everywhere
    torch.manual_seed(0)
    plain = policy.generate(ids, mask, generation)[0]
    assert torch.equal(transposed, plain)

    monkeypatch.setattr(small_products, "MAX_ROWS", MAX_ROWS)
    step = transposed[:, :1]  # one token per row, as a decoding step without its cache
    with torch.no_grad():
        expected = policy.model(step).logits
        with transposed_small_products():
            got = policy.model(step).logits
    if torch.backends.mkl.is_available():
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected)
