"""The unit of data every task yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One prompt with its optional references and free-form metadata."""

    id: str
    prompt: str
    references: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
