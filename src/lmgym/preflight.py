"""Checks that run before any model weights are loaded, so a bad input costs seconds, not a run.

The config itself is validated by pydantic (config.py) and the dataset files by their task
(data/tasks/files.py); here: prompts against the token budget and the model's context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lmgym.config import ConfigError, TrainConfig
from lmgym.data.sample import Sample, describe_sample
from lmgym.rollout.sampling import prompt_lengths

log = logging.getLogger(__name__)


def check_prompt_lengths(tokenizer, samples: Sequence[Sample], config: TrainConfig, split: str) -> int:
    """Count the prompts of ``split`` longer than ``model.max_prompt_tokens``; with
    ``model.long_prompts: error`` the first one is an error that names it."""
    limit = config.model.max_prompt_tokens
    lengths = prompt_lengths(tokenizer, [s.prompt for s in samples])
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long and config.model.long_prompts == "error":
        first = too_long[0]
        raise ConfigError(
            f"{len(too_long)} {split} prompts are longer than model.max_prompt_tokens={limit}; the first is "
            f"{describe_sample(samples[first])} with {lengths[first]} tokens. Raise max_prompt_tokens, shorten the "
            "prompts, or set model.long_prompts=truncate"
        )
    if too_long:
        log.warning(
            "%d of %d %s prompts exceed model.max_prompt_tokens=%d and lose their %s",
            len(too_long),
            len(samples),
            split,
            limit,
            "end" if tokenizer.truncation_side == "right" else "beginning",
        )
    return len(too_long)


def context_length(model_config) -> int | None:
    """The longest sequence the model's position embeddings cover (None: no fixed limit, e.g. T5)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(config: TrainConfig, max_new_tokens: int, model_config, is_seq2seq: bool) -> None:
    """A causal model sees prompt and generation in one sequence: both budgets must fit its context."""
    limit = context_length(model_config)
    if is_seq2seq or limit is None:
        return
    need = config.model.max_prompt_tokens + max_new_tokens
    if need > limit:
        raise ConfigError(
            f"model.max_prompt_tokens ({config.model.max_prompt_tokens}) + generation.max_new_tokens "
            f"({max_new_tokens}) = {need} exceeds the model's context of {limit} tokens; lower one of them"
        )
