"""GRUE IWSLT 2017 English → German (hub ``IWSLT/iwslt2017``, config ``iwslt2017-en-de``; offline:
talk-style sentences with I/we/you subjects from the translator in `translation.py`). Reward ``1 − TER``
or chrF."""

from __future__ import annotations

from lmgym.data.hub import HubSpec
from lmgym.data.task import register_task
from lmgym.data.tasks.translation import translation_factory

HUB = HubSpec("IWSLT/iwslt2017", "iwslt2017-en-de", ("train", "validation", "test"), ("translation",))
DESCRIPTION = "GRUE IWSLT 2017 English→German translation (hub IWSLT/iwslt2017 or offline)."

iwslt2017_task = register_task("iwslt2017", DESCRIPTION)(translation_factory("iwslt2017", HUB, "talk", DESCRIPTION))
