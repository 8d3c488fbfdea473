"""Samples and tasks. `lmgym.data.registry` holds the built-in tasks (`load_task`, `available_tasks`)."""

from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task

__all__ = ["Sample", "Task", "register_task"]
