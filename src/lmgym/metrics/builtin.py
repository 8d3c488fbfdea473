"""Imports every module that registers built-in metrics (their @register_metric decorators run on import)."""

from lmgym.metrics import diversity  # noqa: F401
