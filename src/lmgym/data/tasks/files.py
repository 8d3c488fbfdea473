"""Where `DatasetError` and `read_rows` used to live; `task: file` is now an alias of `task: dataset`
(data/tasks/dataset.py). Kept so that imports from here keep working: new code imports lmgym.data.rows."""

from lmgym.data.rows import DatasetError, read_rows

__all__ = ["DatasetError", "read_rows"]
