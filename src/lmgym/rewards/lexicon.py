"""A word-lexicon rule: a stand-in for a human rater that prefers some words (the RLHF recipe's hidden rule)."""

from __future__ import annotations

from lmgym.rewards.base import Reward

POSITIVE_WORDS = ("good", "great", "love", "wonderful", "excellent", "beautiful", "best", "fun", "brilliant", "amazing")
NEGATIVE_WORDS = ("bad", "awful", "boring", "terrible", "worst", "hate", "dull", "poor", "weak", "mess")
NEUTRAL_WORDS = (
    "the", "a", "movie", "film", "story", "plot", "actor", "scene", "music", "ending", "cast", "it", "was", "is",
    "and", "very", "really", "quite", "time", "night",
)  # fmt: skip


class LexiconRule(Reward):
    """A hidden scoring rule standing in for a human rater: the mean weight of the response's words
    (lower-cased, split on spaces; unknown words weigh 0). Default weights: +1 for a positive word,
    −1 for a negative one."""

    name = "lexicon_rule"

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = weights or {**dict.fromkeys(POSITIVE_WORDS, 1.0), **dict.fromkeys(NEGATIVE_WORDS, -1.0)}

    def text_score(self, text: str) -> float:
        words = text.lower().split()
        return sum(self.weights.get(w.strip(".,!?"), 0.0) for w in words) / max(len(words), 1)

    def score(self, prompts, generations, references, meta) -> list[float]:
        return [self.text_score(t) for t in generations]
