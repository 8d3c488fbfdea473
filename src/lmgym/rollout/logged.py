"""Logged generations: completions of prompts sampled from a policy and scored by a reward, kept with their
exact tokens: the behaviour data of offline RL (ILQL, DPO's ``logged`` data, best-of-K SFT), candidates to
rank for reward models, and RLHF's fresh on-policy comparisons."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmgym.data.preferences import ScoredText
from lmgym.data.sample import Sample
from lmgym.rewards.base import Reward, RewardError
from lmgym.rollout.sampling import sample_and_score


@torch.no_grad()
def log_generations(
    policy,
    reward: Reward,
    samples: Sequence[Sample],
    generation,
    max_prompt_tokens: int,
    per_prompt: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    logits_processor=None,
) -> list[ScoredText]:
    """Sample ``per_prompt`` completions of each prompt from ``policy`` (a `Policy`) and score them with
    ``reward``: behaviour data for offline RL, or candidates to rank. The exact generated tokens are kept;
    per-token rewards stay per token."""
    expanded = [s for s in samples for _ in range(per_prompt)]
    try:
        batches = sample_and_score(
            policy, reward, expanded, generation, max_prompt_tokens, batch_size, seed, logits_processor
        )
    except RewardError as err:
        raise RewardError(f"scoring logged generations: {err}", err.index) from None
    out: list[ScoredText] = []
    for scored in batches:
        for i, sample in enumerate(scored.samples):
            n = int(scored.batch.gen_mask[i].sum())
            ids = tuple(scored.batch.gen_ids[i, :n].tolist())
            row = scored.rewards[i, :n].tolist()
            sid = f"{sample.id}/{len(out) % per_prompt}"
            if reward.per_token:
                out.append(ScoredText(sid, sample.prompt, scored.texts[i], None, tuple(row), ids))
            else:
                out.append(ScoredText(sid, sample.prompt, scored.texts[i], float(sum(row)), None, ids))
    return out
