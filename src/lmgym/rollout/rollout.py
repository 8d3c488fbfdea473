"""The training rollout: generate a batch (keeping generation's own logits and hidden states, so the behaviour
policy's log-probs, entropies and values cost no second forward pass), score the tokens under the frozen
reference in one forward pass, and compute the task rewards."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList

from lmgym.data.sample import Sample
from lmgym.errors import InputError
from lmgym.models.policy import Policy, ReferenceModel, TokenBatch
from lmgym.rewards.base import Reward
from lmgym.rewards.compose import part_scores
from lmgym.rollout.sampling import decode, score_generations, tokenize_prompts


@dataclass
class Rollout:
    samples: list[Sample]
    batch: TokenBatch
    generations: list[str]
    logprobs: torch.Tensor  # [B, G] under the policy that sampled
    ref_logprobs: torch.Tensor  # [B, G]
    values: torch.Tensor | None  # [B, G]
    entropy: torch.Tensor  # [B, G]
    task_rewards: torch.Tensor  # [B, G] the task reward, at the last token or per token
    seconds: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.gen_mask

    @property
    def sample_rewards(self) -> torch.Tensor:  # [B]
        return (self.task_rewards * self.mask).sum(-1)

    @property
    def gen_lengths(self) -> torch.Tensor:  # [B]
        return self.mask.sum(-1)


def check_generation_backend(backend: str, device: torch.device) -> None:
    """Refuse a generation backend that cannot run here, saying what is missing."""
    if backend == "hf":
        return
    import importlib.util

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package (`pip install vllm`, Linux with a CUDA GPU)")
    if device.type != "cuda":
        missing.append(f"a CUDA GPU (this process runs on {device})")
    if missing:
        raise InputError(f"generation.backend=vllm needs {' and '.join(missing)}; or set generation.backend=hf")
    # vLLM is present on a GPU, but this version of lmgym has no verified vLLM rollout path yet: say so
    # instead of silently falling back to HF generate.
    raise NotImplementedError(
        "generation.backend=vllm: generating with vLLM (and syncing its weights after each update) is not "
        "implemented in this version of lmgym; set generation.backend=hf"
    )


@torch.no_grad()
def collect_rollout(
    policy: Policy,
    reference: ReferenceModel,
    reward: Reward,
    samples: list[Sample],
    generation: GenerationConfig,
    max_prompt_tokens: int,
    temperature: float = 1.0,
    logits_processor: LogitsProcessorList | None = None,
    reuse_generation_scores: bool = True,
    keep_trunk: bool = False,
    share_prefill: bool = True,
) -> Rollout:
    """Generate for ``samples``, score the tokens and compute the task rewards.

    With ``reuse_generation_scores`` the behaviour policy's log-probs and values
    come from the logits and hidden states generation computed; otherwise from a
    separate forward pass. The reference always takes one forward pass; with
    ``keep_trunk`` it, like the update's passes, starts above the frozen bottom
    blocks, from their output kept during generation (models/trunk.py).
    """
    tok = policy.tokenizer
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    prompt_ids, prompt_mask, n_truncated = tokenize_prompts(tok, [s.prompt for s in samples], max_prompt_tokens)
    prompt_ids, prompt_mask = prompt_ids.to(policy.device), prompt_mask.to(policy.device)
    if reuse_generation_scores:
        batch, scores = policy.generate_and_score(
            prompt_ids, prompt_mask, generation, temperature, logits_processor, keep_trunk, share_prefill
        )
    else:
        gen_ids, gen_mask = policy.generate(prompt_ids, prompt_mask, generation, logits_processor)
        batch = TokenBatch(prompt_ids, prompt_mask, gen_ids, gen_mask)
    gen_ids, gen_mask = batch.gen_ids, batch.gen_mask
    seconds["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.inference_mode():
        if not reuse_generation_scores:
            scores = policy.score(batch, temperature=temperature)
        ref_logprobs = reference.logprobs(batch, temperature=temperature)
    seconds["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    generations = decode(tok, gen_ids, gen_mask)
    task_rewards = score_generations(reward, samples, generations, gen_ids, gen_mask, tok)
    seconds["reward"] = time.perf_counter() - t0

    mask = gen_mask.float()
    return Rollout(
        samples=samples,
        batch=batch,
        generations=generations,
        logprobs=scores.logprobs.clone() * mask,
        ref_logprobs=ref_logprobs.clone() * mask,
        values=None if scores.values is None else scores.values.clone() * mask,
        entropy=scores.entropy.clone() * mask,
        task_rewards=task_rewards,
        seconds=seconds,
        extras={"n_truncated": n_truncated, "reward_parts": part_scores(reward, len(samples))},
    )


def sample_records(rollout: Rollout, kl: torch.Tensor) -> list[dict[str, Any]]:
    """One record per sample for the run's rollouts.jsonl: its prompt and generation, the reward it was trained
    on (summed over its tokens), what each part of a composed reward gave it (``reward_parts``, each part's own
    score before its weight) and its KL to the reference (``kl``: Σ_t log πθ − log π0, nats; ``kl``: [B, G])."""
    rewards, kls = rollout.sample_rewards.tolist(), kl.sum(-1).tolist()
    parts: dict[str, list[float]] = rollout.extras.get("reward_parts", {})
    return [
        {
            "id": sample.id,
            "prompt": sample.prompt,
            "generation": generation,
            "reward": reward,
            **({"reward_parts": {name: scores[i] for name, scores in parts.items()}} if parts else {}),
            "kl": sample_kl,
        }
        for i, (sample, generation, reward, sample_kl) in enumerate(
            zip(rollout.samples, rollout.generations, rewards, kls, strict=True)
        )
    ]
