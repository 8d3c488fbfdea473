"""Decoding's matrix products in the orientation a CPU's BLAS runs fastest at a few rows.

A decoding step multiplies one row per sequence by every weight of the model. ``F.linear(x, W)`` asks the
BLAS for x·Wᵀ; with up to `MAX_ROWS` rows, MKL computes the same product faster as W·xᵀ, transposed back (on
a 2-core AVX-512 CPU one decoding step's products of the bundled model at 32 rows went from 52-58% to 61% of
the square-matrix peak; on a 2-core AVX2 AMD EPYC, by less: 148 ms against 155 ms for a step's products at
32 rows, each shape repeated, in one run; `benchmarks/decoding.py` times whole generations both ways). Within
`transposed_small_products`, every float32 CPU ``nn.Linear`` applied to at most `MAX_ROWS` rows computes it
that way; larger products (a prefill, a training pass) and every other device or dtype keep ``F.linear``.

The two agree bit for bit with MKL from 12 rows up (and at one row). From 2 to 11 rows ``F.linear`` takes
another MKL kernel whose sums round differently in the last bits (about 1e-7 relative), so a seed may draw
other tokens there than it did before this change; the distribution is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 64  # above it F.linear is as fast or faster (measured at 96 rows: equal; at 256: 0.6×)


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, as W·xᵀ when x is float32 on a CPU with at most `MAX_ROWS` rows."""
    features = x.shape[-1]
    if (
        x.numel() == 0
        or x.numel() > MAX_ROWS * features
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or type(weight) not in (nn.Parameter, torch.Tensor)  # a DTensor, a quantized weight: as they define it
    ):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, features).t()
    out = torch.mm(weight, rows) if bias is None else torch.addmm(bias[:, None], weight, rows)
    return out.t().contiguous().view(*x.shape[:-1], weight.shape[0])


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return product(x, self.weight, self.bias)


_active = False


@contextmanager
def transposed_small_products() -> Iterator[None]:
    """Within the block, ``nn.Linear`` (not its subclasses with their own ``forward``) computes with `product`.
    Process-wide for the block's duration, like `lmgym.models.categorical.inverse_cdf_sampling`: HF ``generate``
    calls the model's modules, the policy's, NLPO's mask policy's and any head a logits processor applies."""
    global _active
    if _active:
        yield
        return
    original = nn.Linear.forward
    nn.Linear.forward = _forward
    _active = True
    try:
        yield
    finally:
        nn.Linear.forward = original
        _active = False
