"""The unit of data every task yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One prompt with its optional references and free-form metadata."""

    id: str
    prompt: str | list[dict[str, str]]  # text, or chat messages ({role, content}) for a chat template
    references: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
