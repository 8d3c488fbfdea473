"""Token-level rewards, mostly for learnable toy tasks and tests."""

from __future__ import annotations

from lmgym.rewards.base import Reward


class TokenShare(Reward):
    """Per sequence: the share of generated tokens whose text (stripped) equals ``target``."""

    def __init__(self, target: str = "good") -> None:
        self.target = target.strip()
        self.name = f"token_share[{self.target}]"

    def score(self, prompts, generations, references, meta) -> list[float]:
        return [sum(t.strip() == self.target for t in m["gen_tokens"]) / max(len(m["gen_tokens"]), 1) for m in meta]


class TokenMatch(Reward):
    """Per token: ``value`` at every generated token whose text (stripped) equals ``target``.

    Causal (a token's reward depends only on that token), so the step-by-step
    environment pays exactly what the batched rollout computes.
    """

    per_token = True

    def __init__(self, target: str = "good", value: float = 1.0) -> None:
        self.target = target.strip()
        self.value = float(value)
        self.name = f"token_match[{self.target}]"

    def score(self, prompts, generations, references, meta) -> list[list[float]]:
        return [[self.value if t.strip() == self.target else 0.0 for t in m["gen_tokens"]] for m in meta]
