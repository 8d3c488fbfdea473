"""`TextGenEnv`: text generation stepped one token at a time.

State: the prompt's tokens (left-padded to ``max_prompt_tokens``) followed by the
tokens generated so far, padded to a fixed length, with its attention mask.
Action: a token id. The episode terminates at EOS and is truncated at the
horizon (``max_new_tokens``). A sequence-level reward is paid on the last step;
a per-token reward is paid on every step (it must be causal: token t's reward
may depend only on tokens ≤ t). ``info`` carries the prompt and generated text.

This is the same MDP the batched trainer optimises; a test steps it with the
tokens of a batched rollout and gets the same rewards.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from lmgym.data.registry import load_task
from lmgym.data.task import Task
from lmgym.errors import InputError, StateError
from lmgym.models.chat import stop_token_ids
from lmgym.models.loading import set_truncation_side
from lmgym.models.policy import generation_mask
from lmgym.rewards.base import Reward, as_reward
from lmgym.rollout.sampling import score_generations, tokenize_prompts


class TextGenEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task: Task | str,
        tokenizer,
        reward: Reward | None = None,
        split: str = "train",
        max_prompt_tokens: int = 64,
        max_new_tokens: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.task = load_task(task) if isinstance(task, str) else task
        self.tokenizer = tokenizer
        set_truncation_side(tokenizer, "auto", self.task.truncation_side)  # as the trainer cuts prompts
        self.reward = as_reward(reward) if reward is not None else self.task.reward
        self.samples = self.task.split(split)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = self.task.horizon(max_new_tokens)
        self.render_mode = render_mode
        vocab = len(tokenizer)
        length = max_prompt_tokens + self.max_new_tokens
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, vocab - 1, shape=(length,), dtype=np.int64),
                "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int64),
            }
        )
        self.action_space = spaces.Discrete(vocab)
        self._eos_ids = set(stop_token_ids(tokenizer))
        self._sample = self.samples[0]
        self._prompt_ids = np.zeros(0, dtype=np.int64)
        self._generated: list[int] = []
        self._done = True

    # The prompt occupies the last len(prompt) slots of the prompt region, as in
    # the left-padded batch; generated tokens follow at max_prompt_tokens + t.
    def _observation(self) -> dict[str, np.ndarray]:
        length = self.observation_space["input_ids"].shape[0]
        ids = np.full(length, self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros(length, dtype=np.int64)
        p = len(self._prompt_ids)
        ids[self.max_prompt_tokens - p : self.max_prompt_tokens] = self._prompt_ids
        mask[self.max_prompt_tokens - p : self.max_prompt_tokens] = 1
        g = len(self._generated)
        ids[self.max_prompt_tokens : self.max_prompt_tokens + g] = self._generated
        mask[self.max_prompt_tokens : self.max_prompt_tokens + g] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _generation_text(self) -> str:
        return self.tokenizer.decode(self._generated, skip_special_tokens=True)

    def _info(self) -> dict[str, Any]:
        return {"sample_id": self._sample.id, "prompt": self._sample.prompt, "generation": self._generation_text()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        index = options.get("sample_index")
        if index is None:
            index = int(self.np_random.integers(len(self.samples)))
        self._sample = self.samples[index]
        ids, mask, _ = tokenize_prompts(self.tokenizer, [self._sample.prompt], self.max_prompt_tokens)
        self._prompt_ids = ids[0][mask[0].bool()].numpy().astype(np.int64)
        self._generated = []
        self._done = False
        return self._observation(), self._info()

    def _rewards(self) -> torch.Tensor:
        gen_ids = torch.tensor([self._generated], dtype=torch.long)
        gen_mask = generation_mask(gen_ids, list(self._eos_ids), self.tokenizer.pad_token_id)
        return score_generations(
            self.reward, [self._sample], [self._generation_text()], gen_ids, gen_mask, self.tokenizer
        )[0]

    def step(self, action: int):
        if self._done:
            raise StateError("step() called on a finished episode; call reset() first")
        if not self.action_space.contains(action):
            raise InputError(f"action {action!r} is not a token id in [0, {self.action_space.n})")
        self._generated.append(int(action))
        terminated = int(action) in self._eos_ids
        truncated = not terminated and len(self._generated) >= self.max_new_tokens
        self._done = terminated or truncated
        reward = 0.0
        if self.reward.per_token or self._done:
            # For a sequence reward, only the final step carries a non-zero value.
            reward = float(self._rewards()[-1])
        return self._observation(), reward, terminated, truncated, self._info()

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return f"{self._sample.prompt}|{self._generation_text()}"
        return None


def make_textgen_env(model: str = "tiny", task: str = "sentiment", **kwargs: Any) -> TextGenEnv:
    """Entry point of ``gymnasium.make("lmgym/TextGen-v0", model=..., task=...)``: only the tokenizer is loaded."""
    from lmgym.models.loading import load_tokenizer

    return TextGenEnv(task, load_tokenizer(model), **kwargs)
