"""The unit of data every task yields."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One prompt with its optional references and free-form metadata."""

    id: str
    prompt: str | list[dict[str, str]]  # text, or chat messages ({role, content}) for a chat template
    references: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


def describe_sample(sample: Sample, generation: str | None = None, limit: int = 160) -> str:
    """One line that lets a user find the sample: its id, prompt and generation (shortened)."""

    def short(text: str) -> str:
        return text if len(text) <= limit else text[: limit - 1] + "…"

    out = f"sample {sample.id!r} (prompt {short(sample.prompt)!r}"
    if generation is not None:
        out += f", generation {short(generation)!r}"
    return out + ")"


def describe_rows(samples: Sequence[Sample], generations: Sequence[str], rows: Sequence[int], most: int = 3) -> str:
    described = "; ".join(describe_sample(samples[i], generations[i]) for i in rows[:most])
    more = f" and {len(rows) - most} more" if len(rows) > most else ""
    return described + more
