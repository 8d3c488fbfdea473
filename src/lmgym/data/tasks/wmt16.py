"""GRUE WMT16 English → German (hub ``wmt/wmt16``, config ``de-en``; offline: news-style sentences from
the translator in `translation.py`). Reward ``1 − TER`` or chrF."""

from __future__ import annotations

from lmgym.data.hub import HubSpec
from lmgym.data.task import register_task
from lmgym.data.tasks.translation import translation_factory

HUB = HubSpec("wmt/wmt16", "de-en", ("train", "validation", "test"), ("translation",))
DESCRIPTION = "GRUE WMT16 English→German translation (hub wmt/wmt16 de-en or offline)."

wmt16_task = register_task("wmt16", DESCRIPTION)(translation_factory("wmt16", HUB, "news", DESCRIPTION))
