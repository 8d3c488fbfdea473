"""Grouped-query attention without copies of the keys and values per query head, on a CPU.

A model with fewer key/value heads than query heads (SmolLM2-135M: 3 and 9) shares each key/value head among
a group of query heads. Given an attention mask, transformers' ``sdpa`` attention copies every key and value
head once per query head of its group (``repeat_kv``) before ``scaled_dot_product_attention``, because CUDA's
fast kernels take no mask with ``enable_gqa``; PyTorch's CPU kernel takes both and computes the same. Within
`cpu_grouped_query_attention`, CPU passes ask the kernel for ``enable_gqa`` instead (CUDA and other devices
keep transformers' choice).

`lmgym.models.policy.forward_rows` runs within it, so the passes that score completions gain: the update's
(packed rows, models/packing.py, carry a mask), the old log-probabilities' and the reference's. Generation
does not: transformers takes its decoding step's choice from the same function, and a changed kernel there
could change which tokens a seed draws. Measured on a 2-core AVX2 CPU at the update's shapes (4 packed rows
of 126 tokens, 9 query and 3 key/value heads of 64): 2.99 against 3.58 ms per layer forward, 10.8 against
12.5 ms forward and backward (`benchmarks/where_time_goes.py` profiles a whole update). The outputs and the queries'
gradients are bit for bit those of the copying path; the keys' and values' gradients differ in the last bits
(the group's heads are summed in another order).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

try:  # transformers ≥ 5 chooses between repeat_kv and enable_gqa here; older versions always copy
    from transformers.integrations import sdpa_attention
except ImportError:  # pragma: no cover - an older transformers without the module
    sdpa_attention = None

_active = False


def _checkpointing_acts(model: nn.Module) -> bool:
    """Whether a block of ``model`` would checkpoint a forward pass run now (and rerun it in the backward)."""
    return torch.is_grad_enabled() and any(
        getattr(m, "gradient_checkpointing", False) and m.training for m in model.modules()
    )


@contextmanager
def cpu_grouped_query_attention(model: nn.Module) -> Iterator[None]:
    """Within the block, transformers' ``sdpa`` attention runs grouped-query attention on a CPU with
    ``enable_gqa`` rather than copying the keys and values per query head. Process-wide for the block's
    duration (the choice is a module-level function of transformers'), like
    `lmgym.models.small_products.transposed_small_products`; the backward pass, run after the block, uses
    what the forward pass chose.

    Not where activation checkpointing acts (a block with checkpointing on, in training mode, gradients
    enabled: what transformers checks): such a block reruns its forward pass inside the backward pass,
    outside the block, and PyTorch refuses a rerun that keeps other tensors (three key heads, not nine) than
    the first run did. A checkpointed model's passes without gradients (the reference's, the old
    log-probabilities') still go without the copies."""
    global _active
    original = getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    if _active or original is None or _checkpointing_acts(model):
        yield
        return

    def use_gqa(attention_mask: torch.Tensor | None, key: torch.Tensor, value: torch.Tensor) -> bool:
        if key.device.type == "cpu" and key.shape[-1] == value.shape[-1]:
            return True
        return original(attention_mask, key, value)

    sdpa_attention.use_gqa_in_sdpa = use_gqa
    _active = True
    try:
        yield
    finally:
        sdpa_attention.use_gqa_in_sdpa = original
        _active = False
