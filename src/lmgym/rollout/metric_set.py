"""The registered metrics an evaluation computes on the held-out generations (``eval.metrics``, by default the
task's metric set), beside the reward, perplexity, distinct-n and length that `evaluate` always reports.

A metric that cannot run here (a missing package, model or jar: `MissingRequirement`; options it cannot do
without) or that fails on the generations is reported once, with the reason, and left out of the later
evaluations: an evaluation metric never stops training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmgym.config import ConfigError
from lmgym.data.sample import Sample
from lmgym.data.task import Task
from lmgym.metrics.base import Metric, MissingRequirement
from lmgym.rewards.catalog import load_metric, metric_infos

log = logging.getLogger(__name__)

# Names in task metric sets that `evaluate` reports itself (under the run's own reference model), so the
# registry's metric of the same name (which loads a model of its own) is not run again.
EVALUATED = {"reward", "perplexity", "distinct"}

Annotate = Callable[[list[str], list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass
class MetricScores:
    """Corpus scores by key (one metric may report several: rouge-1, rouge-2, ...), each metric's keys, per-sample
    values where the metric has them, and the metrics that could not be computed with the reason."""

    scores: dict[str, float] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


class MetricSet:
    """Registered metrics by name, built once and reused at every evaluation (model-based ones load a model).
    ``annotate``: the task's hook that adds what a metric needs from the generations to each sample's meta
    (DailyDialog's predicted intent)."""

    def __init__(self, names: Sequence[str], annotate: Annotate | None = None) -> None:
        self.names = [n for n in dict.fromkeys(names) if n not in EVALUATED]
        self.annotate = annotate
        self._metrics: dict[str, Metric] = {}
        self.missing: dict[str, str] = {}  # every metric found unable to run so far, with the reason

    @classmethod
    def for_task(cls, task: Task, names: Sequence[str] | None) -> MetricSet:
        """``names`` (eval.metrics: each must be a registered metric), or, when None, the registered metrics of
        the task's metric set (a task may list measures that are not registry metrics, such as 'sentiment')."""
        known = metric_infos()
        if names is None:
            names = [n for n in task.metrics if n in known]
        else:
            unknown = [n for n in names if n not in known and n not in EVALUATED]
            if unknown:
                raise ConfigError(
                    f"eval.metrics: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a "
                    f"registered metric; `lmgym metrics` lists them ({', '.join(sorted(known))})"
                )
        return cls(names, task.annotate)

    def score(self, samples: Sequence[Sample], generations: Sequence[str]) -> MetricScores:
        """Every metric that can run, on ``generations`` of ``samples``; the ones that cannot are in ``missing``
        of the result the first time only (and in ``self.missing`` for good)."""
        out = MetricScores()
        active = [n for n in self.names if n not in self.missing]
        if not active or not samples:
            return out
        prompts = [s.prompt for s in samples]
        references = [list(s.references) for s in samples]
        meta = [dict(s.meta) for s in samples]
        annotated = ""
        if self.annotate is not None:
            try:
                meta = self.annotate(list(generations), meta)
            except Exception as err:  # e.g. a classifier that cannot be built here: the metrics needing it say so
                annotated = f" (the task's annotation of the generations failed: {type(err).__name__}: {err})"
                log.warning("annotating the held-out generations failed: %s", err)
        for name in active:
            try:
                if name not in self._metrics:
                    self._metrics[name] = load_metric(name)
            except TypeError as err:  # options without defaults (a classifier path, a reward model folder)
                out.missing[name] = f"needs options: {err}"
                continue
            try:
                result = self._metrics[name](prompts, list(generations), references, meta)
            except MissingRequirement as err:
                out.missing[name] = str(err) + annotated
            except Exception as err:  # a broken metric costs its score, not the evaluation
                log.warning("metric %r failed: %s", name, err)
                out.missing[name] = f"failed: {type(err).__name__}: {err}{annotated}"
            else:
                out.keys[name] = list(result)
                for key, value in result.items():
                    out.scores[key] = float(value.corpus)
                    if value.per_sample is not None:
                        out.per_sample[key] = [float(v) for v in value.per_sample]
        self.missing.update(out.missing)
        return out
