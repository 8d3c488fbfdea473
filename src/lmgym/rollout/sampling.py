"""Sampling and scoring, the one path every caller takes: prompts are tokenized (`tokenize_prompts`), the
policy generates, the completions are decoded (`decode`) and the reward scores them (`score_generations`).
`sample_and_score` runs the whole path in batches with a fixed seed, for held-out evaluation
(lmgym.rollout.evaluation), logged data (lmgym.rollout.logged) and preference data; the training rollout
(lmgym.rollout.rollout) generates with its scores kept and shares the rest. `generation_config` and
`load_policy` make a run's generation settings and a policy to sample from a config, for any model folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedTokenizerBase

from lmgym.config import GenerationSettings, TrainConfig
from lmgym.data.sample import Sample, describe_sample
from lmgym.data.task import Task
from lmgym.errors import LmgymError, UserCodeError
from lmgym.models.chat import configure_chat, fit_chat_prompt, is_messages, render_ids, reward_prompt, uses_chat
from lmgym.models.loading import load_model, set_truncation_side
from lmgym.models.policy import Policy, TokenBatch, make_generation_config
from lmgym.rewards.base import Reward, RewardError, check_scores, frozen


def tokenize_prompts(tokenizer, prompts: list, max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pad and truncate prompts (plain text, or rendered through the chat template: lmgym.models.chat); returns
    ids, mask and how many were truncated."""
    if not uses_chat(tokenizer, prompts):
        full = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        n_truncated = sum(len(ids) > max_prompt_tokens for ids in full)
        enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_prompt_tokens, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], n_truncated
    rows, n_truncated = [], 0
    for prompt in prompts:
        ids, cut = fit_chat_prompt(tokenizer, prompt, max_prompt_tokens)
        rows.append(ids)
        n_truncated += cut
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        where = slice(width - len(ids), width) if tokenizer.padding_side == "left" else slice(0, len(ids))
        input_ids[i, where] = torch.tensor(ids, dtype=torch.long)
        mask[i, where] = 1
    return input_ids, mask, n_truncated


def prompt_lengths(tokenizer, prompts: list) -> list[int]:
    """Each prompt's length in tokens, as `tokenize_prompts` would make it before truncation."""
    if not uses_chat(tokenizer, prompts):
        return [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    return [len(render_ids(tokenizer, p)) for p in prompts]


def configure_tokenizer(tokenizer, config: TrainConfig, task: Task) -> None:
    """The run's prompt handling on ``tokenizer``: which end of a long prompt is cut, and chat templates."""
    set_truncation_side(tokenizer, config.model.truncation_side, task.truncation_side)
    configure_chat(tokenizer, config.model.chat_template, config.rollout.chat, config.model.name)


def decode(tokenizer: PreTrainedTokenizerBase, gen_ids: torch.Tensor, gen_mask: torch.Tensor) -> list[str]:
    """The text of each completion (its tokens up to and including EOS, special tokens dropped)."""
    ids = gen_ids * gen_mask + tokenizer.pad_token_id * (1 - gen_mask)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def score_generations(
    reward: Reward,
    samples: list[Sample],
    generations: list[str],
    gen_ids: torch.Tensor,
    gen_mask: torch.Tensor,
    tokenizer,
) -> torch.Tensor:
    """The reward of each generation as a [B, G] tensor: per token, or the sequence score on its last token.
    ``meta[i]`` carries the sample's own meta plus its generated token ids and their texts. A reward that
    raises is the user's code: the error names it (`UserCodeError`)."""
    lengths = gen_mask.sum(-1).tolist()
    rows = [row[:n] for row, n in zip(gen_ids.tolist(), lengths, strict=True)]  # one device-to-host copy
    # Every generated token's text in one batched call to the tokenizer, then cut back into rows.
    pieces = iter(tokenizer.batch_decode([[t] for row in rows for t in row]))
    meta = [
        {**sample.meta, "gen_token_ids": ids, "gen_tokens": [next(pieces) for _ in ids]}
        | ({"messages": sample.prompt} if is_messages(sample.prompt) else {})
        for sample, ids in zip(samples, rows, strict=True)
    ]
    name = getattr(reward, "name", type(reward).__name__)
    try:
        prompts, references = [reward_prompt(s.prompt) for s in samples], [list(s.references) for s in samples]
        raw = reward(prompts, generations, references, meta)
    except LmgymError:
        raise
    except Exception as err:  # the reward's own bug (or a library it calls): name it and the user's line
        raise UserCodeError(f"reward {name!r}", err) from err
    try:
        scores = check_scores(reward, raw, lengths)
    except RewardError as err:
        if err.index is None:
            raise
        raise RewardError(f"{err}: {describe_sample(samples[err.index], generations[err.index])}", err.index) from None
    out = torch.zeros(gen_ids.shape, dtype=torch.float32)  # filled on the host, then moved in one copy
    for i, row in enumerate(scores):
        if reward.per_token:
            out[i, : lengths[i]] = torch.tensor(row, dtype=torch.float32)
        else:
            out[i, lengths[i] - 1] = row
    return out.to(gen_ids.device)


@dataclass
class Generations:
    """One batch of `sample_and_score`: the samples, their tokens, texts and rewards ([B, G])."""

    samples: list[Sample]
    batch: TokenBatch
    texts: list[str]
    rewards: torch.Tensor  # [B, G]: per token, or the sequence reward on the last token

    @property
    def sample_rewards(self) -> list[float]:
        return (self.rewards * self.batch.gen_mask).sum(-1).tolist()


@torch.no_grad()
def sample_and_score(
    policy: Policy,
    reward: Reward,
    samples: list[Sample],
    generation: GenerationConfig,
    max_prompt_tokens: int,
    batch_size: int = 32,
    seed: int = 0,
    logits_processor: LogitsProcessorList | None = None,
) -> list[Generations]:
    """Generate for ``samples`` in batches from the RNG state ``seed`` (the caller's RNG is left as it was),
    and score the completions on the reward's own scale (`frozen`: no running statistics move)."""
    tok = policy.tokenizer
    out = []
    with torch.random.fork_rng(devices=[]), frozen(reward):
        torch.manual_seed(seed)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            prompt_ids, prompt_mask, _ = tokenize_prompts(tok, [s.prompt for s in chunk], max_prompt_tokens)
            gen_ids, gen_mask = policy.generate(prompt_ids, prompt_mask, generation, logits_processor)
            texts = decode(tok, gen_ids, gen_mask)
            rewards = score_generations(reward, chunk, texts, gen_ids, gen_mask, tok)
            out.append(Generations(chunk, TokenBatch(prompt_ids, prompt_mask, gen_ids, gen_mask), texts, rewards))
    return out


def generation_config(
    settings: GenerationSettings, task: Task, tokenizer: PreTrainedTokenizerBase, **changes: object
) -> GenerationConfig:
    """The run's sampling settings with the task's horizon when the config gives none (``changes`` override)."""
    hf = settings.hf_settings(task.horizon(settings.max_new_tokens))
    return make_generation_config(tokenizer, **{**hf, **changes})


def load_policy(model: str, config: TrainConfig, task: Task) -> Policy:
    """A policy (no value head) to sample from: ``model`` (a name or folder, e.g. a run's final/) loaded with
    the run's dtype and its prompts cut as the run cut them."""
    loaded = load_model(model, config.model.dtype, config.model.trust_remote_code)
    configure_tokenizer(loaded.tokenizer, config, task)
    return Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
