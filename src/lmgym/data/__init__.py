"""Samples, tasks and the task registry."""

from lmgym.data.sample import Sample
from lmgym.data.task import Task, available_tasks, load_task, register_task

__all__ = ["Sample", "Task", "available_tasks", "load_task", "register_task"]
