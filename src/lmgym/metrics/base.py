"""The metric interface and the one registry that serves metrics and rewards.

A metric is called like a reward, ``(prompts, generations, references, meta)``, and returns
``{name: MetricValue(per_sample, corpus)}``: one float per sample where the measure is defined per
sample (``None`` for corpus-only measures such as MAUVE or distinct-n), and the corpus score. One
metric may report several names (ROUGE reports rouge-1, rouge-2, rouge-L, ...).

Every registered metric is usable as a reward through `lmgym.rewards.metric.MetricReward` (a per-sample
value of one of its names), and every reward as a metric through `RewardMetric`; the adapters live with
the rewards, so that metrics never import rewards. `lmgym.rewards.catalog` fills the registry with the
built-ins and looks metrics up (`load_metric`, `metric_infos`).

Metrics that need something this machine may lack (a package, a model path, Java, WordNet) say so
in ``requires`` and report it from ``missing()``; calling one whose requirement is missing raises
`MissingRequirement` with what to supply. Nothing pretends to score.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmgym.errors import InputError, LmgymError


class MissingRequirement(LmgymError, RuntimeError):
    """A metric cannot run here; the message says exactly what to install or supply."""


# The packages of lmgym's `metrics` extra (pip names): the model-based metrics' heavy dependencies and CIDEr's and
# SPICE's pycocoevalcap. A base install imports and trains without them.
METRICS_EXTRA = ("bert-score", "mauve-text", "faiss-cpu", "scikit-learn", "pycocoevalcap")
METRICS_EXTRA_PIP = "pip install 'lmgym[metrics]'"


def missing_packages(*pairs: tuple[str, str]) -> str | None:
    """``pairs`` of (import name, pip name); None when all import, else the pip command that installs the missing
    ones: the `metrics` extra when it holds one of them, else the packages themselves."""
    absent = [pip for module, pip in pairs if importlib.util.find_spec(module) is None]
    if not absent:
        return None
    if any(pip in METRICS_EXTRA for pip in absent):
        return f"`{METRICS_EXTRA_PIP}` ({', '.join(absent)})"
    return f"`pip install {' '.join(absent)}`"


@dataclass(frozen=True)
class MetricValue:
    per_sample: list[float] | None  # one float per sample, or None for corpus-only measures
    corpus: float


MetricResult = dict[str, MetricValue]


class Metric:
    """Base class. Subclasses set ``name`` and implement ``compute``; ``missing`` reports what is lacking."""

    name: str = "metric"
    requires: str = ""  # human-readable: what the metric needs ("" when nothing beyond lmgym's dependencies)
    higher_is_better: bool = True

    def missing(self) -> str | None:
        """None when the metric can run here, else what to install or supply."""
        return None

    def compute(
        self,
        prompts: Sequence[str],
        generations: Sequence[str],
        references: Sequence[Sequence[str]],
        meta: Sequence[dict[str, Any]],
    ) -> MetricResult:
        raise NotImplementedError

    def __call__(self, prompts, generations, references, meta) -> MetricResult:
        problem = self.missing()
        if problem is not None:
            raise MissingRequirement(f"metric {self.name!r} cannot run: {problem}")
        return self.compute(prompts, generations, references, meta)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    factory: Callable[..., Metric]
    description: str
    requires: str
    per_sample: bool  # whether it has per-sample values (so it can be a reward)


_METRICS: dict[str, MetricInfo] = {}


def register_metric(
    name: str, description: str = "", requires: str = "", per_sample: bool = True
) -> Callable[[Callable[..., Metric]], Callable[..., Metric]]:
    """Register a metric factory ``(**options) -> Metric`` under ``name``."""

    def wrap(factory: Callable[..., Metric]) -> Callable[..., Metric]:
        if name in _METRICS:
            raise InputError(f"metric {name!r} is registered twice")
        doc = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
        _METRICS[name] = MetricInfo(name, factory, doc, requires, per_sample)
        return factory

    return wrap
