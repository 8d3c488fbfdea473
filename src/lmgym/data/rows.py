"""Rows of the small JSONL/JSON/CSV files lmgym reads with its own checks (comparisons, scored text,
labels), and the error every data problem raises: it names the file, the row and the field.

Prompt datasets are read by `datasets` instead (data/tasks/dataset.py), which uses `read_rows` only to
word the error when a JSON or CSV file cannot be parsed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lmgym.errors import InputError


class DatasetError(InputError):
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


def read_rows(path: str | Path, json_lines: bool | None = None) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects) or .csv file, as dicts (a CSV's values stay strings).

    ``json_lines`` reads a .json file as one object per line (``datasets`` accepts both layouts)."""
    path = Path(path).expanduser()
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and json_lines):
        rows = _json_lines(path, text)
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


def _json_lines(path: Path, text: str) -> list[dict[str, Any]]:
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
    return rows
