"""One prefill per distinct prompt: group algorithms (GRPO, RLOO) sample k completions of each prompt, and
generating them as k independent rows would run the prompt through the model k times.

`prefill_distinct_prompts` runs each distinct prompt once, all but its last token, into a KV cache, then
copies the cache rows out to the batch; `generate` continues from that cache (it feeds only the last prompt
token, then decodes as usual). The samples and their logits are those of k separate prefills up to float
rounding; the prefill's compute drops by a factor of k.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


def distinct_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct prompt [U], the distinct prompt of every row [B]), or None if all differ."""
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1
    if n == rows.shape[0]:
        return None
    first = torch.full((n,), rows.shape[0], dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=rows.device), reduce="amin")
    return first, inverse


@torch.no_grad()
def prefill_distinct_prompts(
    model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor] | None:
    """A KV cache of every row's prompt but its last token, computed once per distinct prompt, and the
    distinct prompt of every row (to expand anything else computed on the distinct rows); None when the
    prompts are all distinct, too short, or the model is not a plain causal LM."""
    if prompt_ids.shape[1] < 2 or getattr(model.config, "is_encoder_decoder", False):
        return None
    found = distinct_rows(prompt_ids, prompt_mask)
    if found is None:
        return None
    first, inverse = found
    ids, mask = prompt_ids[first, :-1], prompt_mask[first, :-1]
    # generate's own positions for left padding: cumsum of the mask − 1, padding at 1.
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    decoder = model.get_decoder()  # the blocks without the LM head: no logits are needed here
    decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True)
    cache.batch_select_indices(inverse)
    return cache, inverse
