"""Held-out evaluation: task reward, fluency under the reference and diversity."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import GenerationConfig

from lmgym.data.sample import Sample
from lmgym.metrics.diversity import distinct_n
from lmgym.models.policy import Policy, ReferenceModel
from lmgym.rewards.base import Reward
from lmgym.rollout.sampling import sample_and_score


@torch.no_grad()
def evaluate(
    policy: Policy,
    reference: ReferenceModel,
    reward: Reward,
    samples: list[Sample],
    generation: GenerationConfig,
    max_prompt_tokens: int,
    batch_size: int = 32,
    seed: int = 1234,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate for ``samples`` with a fixed seed and score them (on the reward's own scale). Each record
    holds the sample's generation, reward, and the reference's NLL sum over its ``tokens`` (the pieces of a
    per-prompt perplexity).

    ``perplexity`` is the reference model's per-token perplexity of the
    generations (GRUE's fluency measure): it rises when the policy drifts into
    text the original model finds unlikely.
    """
    rewards: list[float] = []
    generations: list[str] = []
    nlls: list[float] = []  # per sample: Σ −log π0 over its generated tokens
    lengths: list[int] = []
    for scored in sample_and_score(policy, reward, samples, generation, max_prompt_tokens, batch_size, seed):
        gen_mask = scored.batch.gen_mask
        ref_logprobs = reference.logprobs(scored.batch)
        nlls += (-(ref_logprobs * gen_mask).sum(-1)).tolist()
        lengths += gen_mask.sum(-1).tolist()
        rewards += scored.sample_rewards
        generations += scored.texts
    metrics = {
        "reward": sum(rewards) / len(rewards),
        "perplexity": math.exp(sum(nlls) / max(sum(lengths), 1)),
        "distinct-1": distinct_n(generations, 1),
        "distinct-2": distinct_n(generations, 2),
        "gen_len": sum(lengths) / len(lengths),
    }
    records = [
        {"id": s.id, "prompt": s.prompt, "generation": g, "reward": r, "ref_nll": nll, "tokens": n}
        for s, g, r, nll, n in zip(samples, generations, rewards, nlls, lengths, strict=True)
    ]
    return metrics, records
