"""The catalog of metrics (every one also a reward): the one module that imports the built-ins and fills
the registry (`lmgym.metrics.base.register_metric`), and looks metrics up by name. `lmgym metrics` lists it.

The built-ins are the metric modules (`lmgym.metrics.builtin`) and the rewards that are also metrics:
R^3, any sequence classifier and a trained reward model (`lmgym.rewards.learned`)."""

from __future__ import annotations

from difflib import get_close_matches
from typing import Any

import lmgym.metrics.builtin
import lmgym.rewards.learned
import lmgym.rewards.r3  # noqa: F401  (the imports register the built-ins)
from lmgym.errors import NotFoundError
from lmgym.metrics.base import _METRICS, Metric, MetricInfo


def metric_infos() -> dict[str, MetricInfo]:
    return dict(sorted(_METRICS.items()))


def load_metric(name: str, **options: Any) -> Metric:
    infos = metric_infos()
    if name not in infos:
        near = get_close_matches(name, infos, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise NotFoundError(f"unknown metric {name!r}{hint} (`lmgym metrics` lists them)")
    return infos[name].factory(**options)


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
