"""Where a GRUE task's rows come from: the Hugging Face hub, a local copy, or the task's offline generator.

Every GRUE task reads rows in its hub dataset's column format and turns them into `Sample`s with one
function, whatever the source. ``source`` picks the source:

- ``offline``: the task's own generator (no files, no network).
- ``hub``: a local copy when ``path`` is given, else ``datasets.load_dataset`` of the hub id (the local
  hub cache is used offline). Failures are errors.
- ``auto`` (default): like ``hub``, but a hub dataset that cannot be reached falls back to the offline
  generator with a logged warning. A ``path`` that is given but broken is always an error.

A local copy is a folder written by ``DatasetDict.save_to_disk``, a folder of split files named after the
hub's splits (``train.jsonl``, ``validation.csv``, ...; json, jsonl, csv or parquet), or a mapping
``{split: file or saved folder}``. Before touching the hub, one TCP connection with a short timeout
checks that it is reachable; when it is not, ``datasets`` runs in offline mode so it fails in about a
second (instead of retrying for half a minute) or reads a cached copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lmgym.errors import InputError, LmgymError, MissingFileError

log = logging.getLogger(__name__)

Source = Literal["offline", "hub", "auto"]
SOURCES: tuple[str, ...] = ("offline", "hub", "auto")
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
REACHABILITY_TIMEOUT_S = 3.0


class DataFormatError(LmgymError, ValueError):
    """A local or hub dataset lacks a split, a column or a field a task needs; the message names them."""


class HubUnavailable(LmgymError, RuntimeError):
    """The hub dataset could not be loaded (no network and no cached copy)."""


@dataclass(frozen=True)
class HubSpec:
    """A hub dataset and what a task needs of it."""

    dataset: str  # hub id, e.g. "stanfordnlp/imdb"
    config: str | None  # the dataset's configuration name, e.g. "3.0.0"
    splits: tuple[str, ...]  # hub split names the task reads
    columns: tuple[str, ...]  # columns every split must have


@dataclass
class Rows:
    """One split's rows (a `datasets.Dataset` or a list of dicts) and where they came from, for error messages."""

    rows: Any
    origin: str

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def select(self, indices: Sequence[int]) -> Rows:
        if hasattr(self.rows, "select"):
            return Rows(self.rows.select(list(indices)), self.origin)
        return Rows([self.rows[i] for i in indices], self.origin)


@dataclass
class Loaded:
    """The rows of every split a task reads, and a short description of the source."""

    splits: dict[str, Rows]
    source: str  # "offline", "hub:<id>" or "local:<path>"


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise InputError(f"task_args.source must be one of {', '.join(SOURCES)}, got {source!r}")


@lru_cache(maxsize=8)
def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether a TCP connection to the hub opens within a few seconds (checked once per process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=REACHABILITY_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_mode(offline: bool) -> Iterator[None]:
    """Put `datasets` and `huggingface_hub` in offline mode for the duration (they read these flags per call)."""
    if not offline:
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def load_hub(spec: HubSpec) -> Loaded:
    """The spec's splits from the hub (or its local cache). Raises `HubUnavailable` when neither answers."""
    import datasets

    offline = not hub_reachable()
    try:
        with _offline_mode(offline):
            loaded = datasets.load_dataset(spec.dataset, spec.config)
    except (ConnectionError, FileNotFoundError, OSError) as err:
        why = "the hub is unreachable and there is no cached copy" if offline else str(err)
        raise HubUnavailable(f"could not load {spec.dataset!r} ({why})") from err
    origin = f"hub:{spec.dataset}" + (f"/{spec.config}" if spec.config else "")
    splits = {}
    for split in spec.splits:
        if split not in loaded:
            raise DataFormatError(f"{origin} has no split {split!r} (it has {sorted(loaded)})")
        splits[split] = Rows(loaded[split], f"{origin}[{split}]")
    _check_columns(splits, spec)
    return Loaded(splits, origin)


def load_local(spec: HubSpec, path: str | Path | Mapping[str, str | Path], task: str) -> Loaded:
    """A local copy in the hub's column format (see the module docstring for the accepted layouts)."""
    if isinstance(path, Mapping):
        unknown = sorted(set(path) - set(spec.splits))
        if unknown:
            raise DataFormatError(f"task {task!r}: path names unknown split(s) {unknown}; expected {spec.splits}")
        files = {split: Path(p).expanduser() for split, p in path.items()}
        where = ", ".join(str(p) for p in files.values())
    else:
        root = Path(path).expanduser()
        where = str(root)
        if not root.exists():
            raise MissingFileError(f"task {task!r}: local dataset {root} does not exist")
        if root.is_file():
            raise DataFormatError(
                f"task {task!r}: {root} is a single file; give a folder with one file per split "
                f"({', '.join(f'{s}.jsonl' for s in spec.splits)}), a save_to_disk folder, or a mapping split → file"
            )
        if (root / "dataset_dict.json").exists():
            return _from_saved_dict(spec, root)
        files = {}
        for split in spec.splits:
            found = [root / f"{split}{ext}" for ext in FILE_FORMATS if (root / f"{split}{ext}").exists()]
            if len(found) > 1:
                raise DataFormatError(f"task {task!r}: {root} has several files for split {split!r}: {found}")
            if found:
                files[split] = found[0]
    missing = [s for s in spec.splits if s not in files]
    if missing:
        raise DataFormatError(
            f"task {task!r}: local dataset {where} lacks split(s) {missing}; expected files named "
            f"{', '.join(f'{s}.jsonl' for s in spec.splits)} (or .json/.csv/.parquet) or a save_to_disk folder"
        )
    splits = {split: _read_split(file) for split, file in files.items()}
    _check_columns(splits, spec)
    return Loaded(splits, f"local:{where}")


def _from_saved_dict(spec: HubSpec, root: Path) -> Loaded:
    import datasets

    loaded = datasets.load_from_disk(str(root))
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataFormatError(f"{root} holds one split, not a DatasetDict with splits {spec.splits}")
    missing = [s for s in spec.splits if s not in loaded]
    if missing:
        raise DataFormatError(f"{root} lacks split(s) {missing} (it has {sorted(loaded)})")
    splits = {s: Rows(loaded[s], f"{root}[{s}]") for s in spec.splits}
    _check_columns(splits, spec)
    return Loaded(splits, f"local:{root}")


def _read_split(file: Path) -> Rows:
    """One split from a file, or from a folder written by ``Dataset.save_to_disk``."""
    import datasets

    if not file.exists():
        raise MissingFileError(f"local dataset file {file} does not exist")
    if file.is_dir():
        loaded = datasets.load_from_disk(str(file))
        if isinstance(loaded, datasets.DatasetDict):
            raise DataFormatError(f"{file} holds several splits ({sorted(loaded)}); name one Dataset per split")
        rows = loaded
    else:
        kind = FILE_FORMATS.get(file.suffix.lower())
        if kind is None:
            raise DataFormatError(f"{file}: unsupported file type {file.suffix!r}; use {', '.join(FILE_FORMATS)}")
        if file.stat().st_size == 0 or (kind != "parquet" and not file.read_text(encoding="utf-8").strip()):
            raise DataFormatError(f"local dataset file {file} is empty")
        try:
            rows = datasets.load_dataset(kind, data_files=str(file), split="train")
        except Exception as err:  # the builders raise many types; the file is what the user must fix
            raise DataFormatError(f"could not read {file} as {kind}: {err}") from err
    if len(rows) == 0:
        raise DataFormatError(f"local dataset {file} has no rows")
    return Rows(rows, str(file))


def _check_columns(splits: dict[str, Rows], spec: HubSpec) -> None:
    for rows in splits.values():
        names = rows.rows.column_names if hasattr(rows.rows, "column_names") else sorted(rows.rows[0]) if rows else []
        missing = [c for c in spec.columns if c not in names]
        if missing:
            raise DataFormatError(
                f"{rows.origin}: missing column(s) {missing} (it has {sorted(names)}); "
                f"a {spec.dataset} copy needs {list(spec.columns)}"
            )


def load_rows(
    task: str,
    spec: HubSpec,
    source: str,
    path: str | Path | Mapping[str, str | Path] | None,
    offline: Any,
) -> Loaded:
    """Rows for ``task`` from the source its ``task_args`` ask for; ``offline()`` makes the generator's rows.

    ``offline`` returns ``{hub split: list of rows}`` in the hub's format."""
    check_source(source)
    if source == "offline":
        if path is not None:
            raise InputError(f"task {task!r}: source=offline ignores path={path!r}; use source=hub or auto")
        return _offline(offline, spec)
    if path is not None:
        return load_local(spec, path, task)
    try:
        return load_hub(spec)
    except HubUnavailable as err:
        if source == "hub":
            raise HubUnavailable(
                f"task {task!r}: {err}. Give a local copy with task_args.path or use source=offline"
            ) from err
        log.warning("task %r: %s; using the offline generator instead", task, err)
        return _offline(offline, spec)


def _offline(offline: Any, spec: HubSpec) -> Loaded:
    generated = offline()
    return Loaded({split: Rows(generated[split], f"offline[{split}]") for split in spec.splits}, "offline")


def get_field(
    row: Mapping[str, Any], name: str, origin: str, index: int, kind: type | tuple[type, ...] = object
) -> Any:
    """``row[name]``, or a `DataFormatError` naming the file, the row and the field."""
    if name not in row or row[name] is None:
        raise DataFormatError(f"{origin} row {index}: field {name!r} is missing")
    value = row[name]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(f"{origin} row {index}: field {name!r} should be {expected}, got {value!r:.80}")
    return value


def records_of(value: Any) -> list[dict[str, Any]]:
    """A list of records from either layout `datasets` uses for a sequence of dicts: a list of dicts
    (json files) or a dict of equal-length lists (the Arrow-backed hub datasets)."""
    if isinstance(value, Mapping):
        keys = list(value)
        n = len(value[keys[0]]) if keys else 0
        return [{k: value[k][i] for k in keys} for i in range(n)]
    return list(value)
