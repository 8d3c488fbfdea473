"""Drawing the next token by inverse-CDF sampling: one uniform number per row and a search in the row's
cumulative distribution.

``torch.multinomial`` (what HF ``generate`` samples with) draws one exponential variate per vocabulary
entry to sample one token per row: 32 rows × 49k tokens take 37 ms per decoding step on a 2-core CPU,
17% of a rollout's generation, where this takes about 7 ms. The distribution is the same (exact up to
float64 rounding of the cumulative sums, which never gives a zero-probability token any chance); the
random stream differs, so a seed draws other tokens than ``torch.multinomial`` would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lmgym.errors import TrainingError


def sample_categorical(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``weights`` [B, V] (non-negative, any positive sum), drawn with probability
    proportional to its weight; returns [B] (long)."""
    if weights.dim() != 2:
        raise ValueError(f"weights must be [rows, categories], got shape {tuple(weights.shape)}")
    cdf = weights.to(torch.float64).cumsum(-1)
    total = cdf[:, -1:]
    invalid = ~torch.isfinite(total).all() | (total <= 0).any() | (weights < 0).any()
    if bool(invalid):  # one host sync per decoding step
        raise TrainingError(
            "the next-token probabilities hold NaN/inf or negative values, or a row sums to 0: the policy's "
            "logits are not finite"
        )
    u = torch.rand(total.shape, dtype=torch.float64, device=weights.device, generator=generator) * total
    # Below the total, so the first position whose cumulative sum passes u has a positive weight.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


_active = False


@contextmanager
def inverse_cdf_sampling() -> Iterator[None]:
    """Within the block, ``torch.multinomial(probs, 1)`` of a [B, V] tensor samples with `sample_categorical`
    (other calls are passed through). HF ``generate`` has no hook for its sampler, so the function is swapped
    for the block's duration (process-wide: another thread sampling meanwhile gets the same distribution)."""
    global _active
    if _active:
        yield
        return
    original = torch.multinomial

    def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
        if num_samples != 1 or input.dim() != 2 or out is not None:
            return original(input, num_samples, replacement, generator=generator, out=out)
        return sample_categorical(input, generator)[:, None]

    torch.multinomial = multinomial
    _active = True
    try:
        yield
    finally:
        torch.multinomial = original
        _active = False
