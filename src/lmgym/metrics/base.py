"""The metric interface and the one registry that serves metrics and rewards.

A metric is called like a reward, ``(prompts, generations, references, meta)``, and returns
``{name: MetricValue(per_sample, corpus)}``: one float per sample where the measure is defined per
sample (``None`` for corpus-only measures such as MAUVE or distinct-n), and the corpus score. One
metric may report several names (ROUGE reports rouge-1, rouge-2, rouge-L, ...).

Every registered metric is usable as a reward through `MetricReward` (a per-sample value of one of
its names), and every reward is usable as a metric through `RewardMetric` (its per-sample scores and
their mean).

Metrics that need something this machine may lack (a package, a model path, Java, WordNet) say so
in ``requires`` and report it from ``missing()``; calling one whose requirement is missing raises
`MissingRequirement` with what to supply. Nothing pretends to score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmgym.errors import InputError, LmgymError, NotFoundError
from lmgym.rewards.base import Reward


class MissingRequirement(LmgymError, RuntimeError):
    """A metric cannot run here; the message says exactly what to install or supply."""


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


def _ensure_builtin_metrics() -> None:
    # Importing the modules runs their @register_metric decorators.
    import lmgym.metrics.builtin  # noqa: F401


def metric_infos() -> dict[str, MetricInfo]:
    _ensure_builtin_metrics()
    return dict(sorted(_METRICS.items()))


def load_metric(name: str, **options: Any) -> Metric:
    infos = metric_infos()
    if name not in infos:
        from difflib import get_close_matches

        near = get_close_matches(name, infos, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise NotFoundError(f"unknown metric {name!r}{hint} (`lmgym metrics` lists them)")
    return infos[name].factory(**options)


class MetricReward(Reward):
    """One per-sample value of a metric, as a sequence-level reward."""

    def __init__(self, metric: Metric, key: str | None = None) -> None:
        self.metric = metric
        self.key = key
        self.name = key or metric.name

    def score(self, prompts, generations, references, meta) -> list[float]:
        result = self.metric(prompts, generations, references, meta)
        key = self.key or (self.metric.name if self.metric.name in result else next(iter(result)))
        if key not in result:
            raise NotFoundError(f"metric {self.metric.name!r} reports {sorted(result)}, not {key!r}")
        if result[key].per_sample is None:
            raise InputError(f"metric {key!r} is corpus-level only; it has no per-sample value to use as a reward")
        return list(result[key].per_sample)


class RewardMetric(Metric):
    """A reward reported as a metric: its per-sample scores (summed over tokens if per-token) and their mean."""

    def __init__(self, reward: Reward, name: str | None = None) -> None:
        self.reward = reward
        self.name = name or getattr(reward, "name", "reward")

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        scores = self.reward(prompts, generations, references, meta)
        per_sample = [float(sum(s)) if isinstance(s, (list, tuple)) else float(s) for s in scores]
        corpus = sum(per_sample) / len(per_sample) if per_sample else float("nan")
        return {self.name: MetricValue(per_sample, corpus)}


def availability(info: MetricInfo) -> tuple[bool, str]:
    """Whether the metric can run here with its default options, and if not, what to supply.

    Metrics whose options have no defaults (a classifier path, a reward model folder) are reported as
    needing them."""
    try:
        metric = info.factory()
    except TypeError:
        return False, f"needs options: {info.requires or 'see its documentation'}"
    except Exception as err:  # a default that cannot be built here (a missing bundled model, ...)
        return False, str(err)
    problem = metric.missing()
    return (problem is None), (problem or "")


def requirement(info: MetricInfo) -> str:
    """What the metric needs, from its registration or its class."""
    return info.requires or str(getattr(info.factory, "requires", "") or "")
