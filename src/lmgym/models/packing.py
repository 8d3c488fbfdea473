"""Packed scoring passes: a prompt shared by several completions is run once, not once per completion.

Group algorithms (GRPO, RLOO) score k completions of each prompt, and DPO a chosen and a rejected one. Laid
out one completion per row, every row repeats its prompt, so the update's forward and backward passes and the
reference's pass run each prompt k times. `pack` lays each distinct prompt out once, followed by its
completions, in a row of its own (short ones share a row), with a 4-D attention mask that lets each completion
see the prompt and its own earlier tokens only, and the position ids each token has in its own row. Every token
then attends to exactly the keys, at exactly the positions, it would in its own row, so the logits and hidden
states are those of the row-per-completion pass up to float rounding. Left padding is dropped along the way.

The logits are needed at the prompt's last position (it scores each completion's first token) and at each
completion token but the last; the LM head runs there only (``logits_to_keep`` as a boolean mask), and `rows`
maps each generated token to the row of logits that scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmgym.models.prefill import distinct_rows

PACKED_ATTENTION = ("sdpa", "eager")  # attention implementations that take an arbitrary 4-D mask


@dataclass(frozen=True)
class Packed:
    input_ids: torch.Tensor  # [R, L]
    position_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, 1, L, L]: bool (True: may attend) for sdpa, additive float for eager
    keep: torch.Tensor  # [R, L] bool: the positions whose logits are computed, row-major: the N rows of logits
    rows: torch.Tensor  # [B, G]: the row of logits (of N) that scores each generated token
    sources: torch.Tensor  # [R, L]: each position's place in the unpacked [B, P + G − 1] layout (flat; 0 for padding)


def can_pack(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> bool:
    """Whether `pack` applies: a causal LM whose attention takes a 4-D mask and whose head takes a boolean
    ``logits_to_keep``, prompts left-padded (the last position real), and some prompt repeated."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or prompt_ids.shape[0] < 2:
        return False
    if getattr(config, "_attn_implementation", None) not in PACKED_ATTENTION:
        return False
    if not getattr(model, "_supports_logits_to_keep", lambda: False)():
        return False
    return bool(prompt_mask[:, -1].all())


def _segments(prompt_mask: torch.Tensor, first: torch.Tensor, inverse: torch.Tensor, G: int) -> list[torch.Tensor]:
    """Per distinct prompt, the flat indices (into the [B, T = P + G − 1] layout) of its segment: the prompt's
    real tokens from its first row, then, for each of its rows in order, that row's generated tokens but the
    last."""
    P = prompt_mask.shape[1]
    T = P + G - 1
    gen_cols = torch.arange(P, T, device=prompt_mask.device)
    out = []
    for u, row in enumerate(first.tolist()):
        prompt = row * T + torch.nonzero(prompt_mask[row]).flatten()
        members = torch.nonzero(inverse == u).flatten()
        out.append(torch.cat([prompt, (members.unsqueeze(1) * T + gen_cols).flatten()]))
    return out


def _bins(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing into rows as long as the longest segment: segment indices per row."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([])
            room.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    return rows


def pack(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    gen_ids: torch.Tensor,
    gen_mask: torch.Tensor,
    attention: str,
    pad_id: int = 0,
) -> Packed | None:
    """The packed layout of a batch (see the module's docstring), or None when no prompt repeats."""
    found = distinct_rows(prompt_ids, prompt_mask)
    if found is None or gen_ids.shape[1] < 1:
        return None
    first, inverse = found
    B, P = prompt_ids.shape
    G = gen_ids.shape[1]
    T = P + G - 1
    device = prompt_ids.device
    segments = _segments(prompt_mask, first, inverse, G)
    rows_of = _bins([len(s) for s in segments])
    L = max(sum(len(segments[i]) for i in row) for row in rows_of)
    R = len(rows_of)

    # What each packed position is: its source in the unpacked layout and its segment (−1: padding).
    sources = torch.zeros(R, L, dtype=torch.long, device=device)
    segment = torch.full((R, L), -1, dtype=torch.long, device=device)
    for r, members in enumerate(rows_of):
        at = 0
        for i in members:
            n = len(segments[i])
            sources[r, at : at + n] = segments[i]
            segment[r, at : at + n] = i
            at += n
    real = segment >= 0
    ids = torch.cat([prompt_ids, gen_ids[:, :-1]], dim=1).reshape(-1)
    mask = torch.cat([prompt_mask, gen_mask[:, :-1]], dim=1).to(torch.bool)
    # The position ids each token has in its own left-padded row (as forward_generated gives them).
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0).reshape(-1)
    mask = mask.reshape(-1)
    row_of, col_of = sources // T, sources % T

    # May attend: same segment, a real key, not later in its own row, and a prompt key or one of its own row.
    same = (segment.unsqueeze(2) == segment.unsqueeze(1)) & real.unsqueeze(2)
    key_ok = mask[sources].unsqueeze(1) & (col_of.unsqueeze(1) <= col_of.unsqueeze(2))
    own = (col_of.unsqueeze(1) < P) | (row_of.unsqueeze(1) == row_of.unsqueeze(2))
    allowed = same & key_ok & own
    allowed |= torch.eye(L, dtype=torch.bool, device=device) & ~real.unsqueeze(2)  # padding sees itself: no empty row

    # The logits: at each segment's last prompt token and at every generated token (all but each row's last).
    keep = real & (col_of >= P - 1)  # prompts come from their first row: column P − 1 is only there
    order = torch.full((B * T,), -1, dtype=torch.long, device=device)
    order[sources[keep]] = torch.arange(int(keep.sum()), device=device)
    # Generated token t of row b is scored at (b, P − 1 + t); t = 0 by its prompt's last token, in the first row.
    scorer_rows = torch.arange(B, device=device).unsqueeze(1).expand(B, G).clone()
    scorer_rows[:, 0] = first[inverse]
    scorer = scorer_rows * T + (P - 1 + torch.arange(G, device=device))
    rows = order[scorer]

    input_ids = torch.where(real, ids[sources], pad_id)
    position_ids = torch.where(real, positions[sources], 0)
    attention_mask = allowed.unsqueeze(1)
    if attention == "eager":  # additive: 0 where allowed, the dtype's minimum elsewhere
        blocked = torch.finfo(torch.float32).min
        attention_mask = torch.zeros(attention_mask.shape, device=device).masked_fill(~attention_mask, blocked)
    return Packed(input_ids, position_ids, attention_mask, keep, rows, sources)
