"""Held-out evaluation: task reward, fluency under the reference and diversity."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import GenerationConfig

from lmgym.algos.rollout import compute_task_rewards, tokenize_prompts
from lmgym.data.sample import Sample
from lmgym.metrics.diversity import distinct_n
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch
from lmgym.rewards.base import Reward, frozen


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
    """Generate for ``samples`` with a fixed seed and score them.

    ``perplexity`` is the reference model's per-token perplexity of the
    generations (GRUE's fluency measure): it rises when the policy drifts into
    text the original model finds unlikely.
    """
    tok = policy.tokenizer
    rewards: list[float] = []
    generations: list[str] = []
    nll_sum, n_tokens, lengths = 0.0, 0, []
    with torch.random.fork_rng(devices=[]), frozen(reward):  # the reward's own scale; running statistics stay
        torch.manual_seed(seed)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            prompt_ids, prompt_mask, _ = tokenize_prompts(tok, [s.prompt for s in chunk], max_prompt_tokens)
            gen_ids, gen_mask = policy.generate(prompt_ids, prompt_mask, generation)
            batch = TokenBatch(prompt_ids, prompt_mask, gen_ids, gen_mask)
            texts = tok.batch_decode(gen_ids * gen_mask + tok.pad_token_id * (1 - gen_mask), skip_special_tokens=True)
            task_rewards = compute_task_rewards(reward, chunk, texts, gen_ids, gen_mask, tok)
            ref_logprobs = reference.logprobs(batch)
            nll_sum += float(-(ref_logprobs * gen_mask).sum())
            n_tokens += int(gen_mask.sum())
            lengths += gen_mask.sum(-1).tolist()
            rewards += (task_rewards * gen_mask).sum(-1).tolist()
            generations += texts
    metrics = {
        "reward": sum(rewards) / len(rewards),
        "perplexity": math.exp(nll_sum / max(n_tokens, 1)),
        "distinct-1": distinct_n(generations, 1),
        "distinct-2": distinct_n(generations, 2),
        "gen_len": sum(lengths) / len(lengths),
    }
    records = [
        {"id": s.id, "prompt": s.prompt, "generation": g, "reward": r}
        for s, g, r in zip(samples, generations, rewards, strict=True)
    ]
    return metrics, records
