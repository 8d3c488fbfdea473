"""Sentiment rewards that run offline."""

from __future__ import annotations

from functools import cached_property

from lmgym.rewards.base import Reward


class VaderSentiment(Reward):
    """VADER compound score of the generation, in [-1, 1] (positive is higher)."""

    name = "vader_sentiment"

    @cached_property
    def analyzer(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()

    def score(self, prompts, generations, references, meta) -> list[float]:
        return [float(self.analyzer.polarity_scores(text)["compound"]) if text.strip() else 0.0 for text in generations]
