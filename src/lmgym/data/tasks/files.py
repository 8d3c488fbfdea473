"""Task `file`: prompts (and optional references) from the user's own JSONL, JSON or CSV files.

    task: file
    task_args: {train: data/train.jsonl, val: data/val.jsonl, test: data/test.jsonl,
                prompt_field: prompt, references_field: references}

Each row needs ``prompt_field`` (a non-empty string); ``references_field`` is optional per row (a
string or a list of strings); every other field goes to ``Sample.meta``. Without ``val``/``test`` files
the last ``holdout`` fraction of the train file's rows (at least one each) becomes val and test.
Every problem names the file, the row and the field. The reward comes from the config's `reward`
section or the trainer's ``reward=`` argument: the data alone does not say what to optimise.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.errors import LmgymError


class DatasetError(LmgymError, ValueError):
    """A dataset file is missing, unreadable or malformed; the message names the file and row."""


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"dataset path {path} is not a file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"dataset file {path} is not UTF-8 (line {line}, byte {err.start}: {raw[err.start : err.start + 1]!r}); "
            "re-save it as UTF-8"
        ) from None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects) or .csv file, as dicts."""
    path = Path(path).expanduser()
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path} line {n} is not valid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path} line {n} is a JSON {type(row).__name__}, not an object")
            rows.append(row)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DatasetError(f"{path} must hold a JSON list of objects")
        rows = data
    elif suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise DatasetError(f"dataset file {path}: unsupported extension {suffix!r} (use .jsonl, .json or .csv)")
    if not rows:
        raise DatasetError(f"dataset file {path} has no rows")
    return rows


def rows_to_samples(
    rows: list[dict[str, Any]], source: str, prompt_field: str, references_field: str, id_field: str | None
) -> list[Sample]:
    samples = []
    for n, row in enumerate(rows, start=1):
        if prompt_field not in row:
            raise DatasetError(
                f"{source} row {n} has no {prompt_field!r} field (it has {sorted(row)}); "
                "set task_args.prompt_field to the right column"
            )
        prompt = row[prompt_field]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"{source} row {n}: {prompt_field!r} must be a non-empty string, got {prompt!r:.60}")
        refs = row.get(references_field, [])
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise DatasetError(f"{source} row {n}: {references_field!r} must be a string or a list of strings")
        sample_id = str(row[id_field]) if id_field and id_field in row else f"{Path(source).stem}-{n}"
        meta = {k: v for k, v in row.items() if k not in (prompt_field, references_field, id_field)}
        samples.append(Sample(id=sample_id, prompt=prompt, references=tuple(refs), meta=meta))
    return samples


@register_task("file", "your own prompts from JSONL/JSON/CSV files (task_args: train, val, test, prompt_field, ...)")
def file_task(
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    prompt_field: str = "prompt",
    references_field: str = "references",
    id_field: str | None = "id",
    holdout: float = 0.1,
    max_new_tokens: int = 32,
) -> Task:
    """Prompts from files; the reward comes from the config."""
    if train is None:
        raise DatasetError("task 'file' needs task_args.train: the path of a .jsonl, .json or .csv file")
    if not 0 < holdout < 0.5:
        raise DatasetError(f"task_args.holdout must be in (0, 0.5), got {holdout}")

    def load(path: str) -> list[Sample]:
        return rows_to_samples(read_rows(path), path, prompt_field, references_field, id_field)

    splits = {"train": load(train)}
    if val is None or test is None:
        rows = splits["train"]
        if len(rows) < 3:
            raise DatasetError(f"{train} has {len(rows)} rows: too few to hold out val and test (give val/test files)")
        n_hold = max(1, int(len(rows) * holdout))
        splits["train"], held = rows[: -2 * n_hold], rows[-2 * n_hold :]
        splits["val"], splits["test"] = held[:n_hold], held[n_hold:]
    if val is not None:
        splits["val"] = load(val)
    if test is not None:
        splits["test"] = load(test)
    return Task(
        name="file",
        splits=splits,
        reward=None,
        description=f"prompts from {train}",
        generation={"max_new_tokens": max_new_tokens},
    )
