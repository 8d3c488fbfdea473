"""`lmgym label`: human judgments of response pairs in the browser, stored as comparisons that the reward-model
and DPO trainers read, and statistics of them (agreement, position bias, A/B win rates)."""

from __future__ import annotations

import importlib.util

SERVER_PACKAGES = ("starlette", "uvicorn", "jinja2")
STATS_PACKAGES = ("statsmodels", "sklearn")


def missing_packages(stats: bool = False) -> str | None:
    """A message naming what the `label` extra would install, or None when everything is there."""
    names = STATS_PACKAGES if stats else SERVER_PACKAGES
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"lmgym label needs {', '.join(missing)}: pip install 'lmgym[label]'"
