"""Evaluation metrics."""

from lmgym.metrics.diversity import distinct_n

__all__ = ["distinct_n"]
