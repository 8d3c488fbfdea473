"""Task `dataset` (alias `file`): prompts from the user's own data, read by `datasets`.

    task: dataset
    task_args: {path: openai/gsm8k, subset: main, prompt_template: "Question: {question}\\nAnswer:",
                references_field: answer}

Where the rows come from (``path`` or ``train``, not both):

- ``path``: a hub dataset id (``subset`` picks its configuration: the hub viewer's "Subset", `datasets`'
  ``name``); a folder written by ``save_to_disk`` (a ``DatasetDict`` or one ``Dataset``); a folder of data
  files named after their splits (``train.jsonl``, ``test.parquet``, ...); or one data file. The hub
  honours ``HF_HUB_OFFLINE`` and its cache; offline, a dataset that is not cached is one error, at once.
- ``train``, and optionally ``val`` and ``test``: one data file (or one-``Dataset`` save_to_disk folder) each.

Data files are .jsonl, .json, .csv, .parquet or .arrow; `datasets` infers the column types, so a CSV's
numbers reach the reward as numbers.

Columns: ``prompt_field`` (default ``prompt``) holds a non-empty string or a list of chat messages
(``{role, content}`` dicts, kept as the Sample's prompt for the model's chat template); or
``prompt_template`` builds the prompt from the row's columns with ``str.format``
(``"Question: {question}\\nAnswer:"``). ``references_field`` (default ``references``, optional per row)
holds a string or a list of strings; ``id_field`` (default ``id``) names the samples. A field named
explicitly must exist. Every other column reaches the reward in ``Sample.meta``, its type kept.

Splits: with ``path``, ``train_split`` (default ``train``), ``val_split`` (default: the first of
``validation``, ``val``, ``valid``, ``dev`` present) and ``test_split`` (default ``test``). A val or test
split the data lacks is held out of train by a ``seed``-ed draw: the ``holdout`` fraction of its rows (one
number for both, or ``{val: 0.05, test: 0.1}``), at least one row each.

Every problem names the file (or hub split), the row and the field. The task has no reward: the config's
``reward`` section or the trainer's ``reward=`` argument gives it, since the data alone does not say what to
optimise. ``max_new_tokens`` is the task's generation default.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import random
import re
import string
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmgym.data.hub import HubUnavailable, _offline_mode, hub_reachable, records_of
from lmgym.data.rows import DatasetError, read_rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.errors import InputError, MissingFileError

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
VAL_SPLIT_NAMES = ("validation", "val", "valid", "dev")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
DEFAULT_HOLDOUT = 0.1
_FORMATS_HINT = "use .jsonl, .json, .csv, .parquet or .arrow, or a save_to_disk folder"


@dataclass(frozen=True)
class RowSet:
    """One split's rows (a `datasets.Dataset`), where they came from, and the prefix of generated ids."""

    data: Any
    origin: str  # names the file or hub split in every error
    prefix: str


# --- reading ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence `datasets`' own logging and progress bars while it reads a local file: its failures are
    re-raised as one error naming the file, and a progress bar per small file is noise."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from datasets.utils import logging as ds_logging

    level, bars_were_off = ds_logging.get_verbosity(), are_progress_bars_disabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL + 10)
    with warnings.catch_warnings():  # an environment variable that forces the bars on wins, with a warning
        warnings.simplefilter("ignore")
        disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not bars_were_off:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                enable_progress_bars()


def _describe(err: BaseException) -> str:
    """The exception, and the one at the bottom of its chain when that is another (`datasets` wraps the parser's)."""
    root = err
    for _ in range(20):  # a chain is short; the bound only guards against a cycle
        if (nxt := root.__cause__ or root.__context__) is None:
            break
        root = nxt
    text = f"{type(err).__name__}: {err}"
    return text if root is err else f"{text} ({type(root).__name__}: {root})"


def _first_chars(path: Path, n: int = 2) -> str:
    """The first ``n`` non-blank characters of a text file (to tell a JSON list from JSON lines)."""
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="replace")
    return "".join(head.split())[:n]


def _diagnose(path: Path, kind: str, err: BaseException) -> DatasetError:
    """The error for a file `datasets` could not read: our own parse names the line when it finds one."""
    if kind in ("json", "csv"):
        read_rows(path, json_lines=_first_chars(path, 1) == "{")  # raises the precise error, if it finds one
        return DatasetError(f"could not read {path} as {kind}: {_describe(err)}")
    return DatasetError(f"dataset file {path} is not a valid {kind} file ({_describe(err)})")


def _check_utf8(path: Path) -> None:
    """pyarrow reads invalid UTF-8 into a column and fails only when a row is read; check the bytes first."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        read_rows(path)  # names the line and the byte
        raise DatasetError(f"dataset file {path} is not UTF-8; re-save it as UTF-8") from None


def _check_json_layout(path: Path) -> None:
    """`datasets` reads a JSON list of scalars as a 'text' column; the old loader's checks say what is wrong."""
    head = _first_chars(path)
    json_list = path.suffix.lower() == ".json" and head[:1] == "["
    if (head[:1] != "{" and not json_list) or (json_list and head[1:2] not in ("{", "]")):
        read_rows(path)  # names the line and what it holds
        raise DatasetError(f"{path} must hold a JSON list of objects or one object per line")


def _read_file(path: str | os.PathLike[str], label: str) -> RowSet:
    """One split from a data file, or from a folder written by ``Dataset.save_to_disk``."""
    import datasets

    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"dataset file {path} (task_args.{label}) does not exist")
    if path.is_dir():
        loaded = _load_saved(path)
        if loaded is None or isinstance(loaded, datasets.DatasetDict):
            raise DatasetError(
                f"{path} (task_args.{label}) is a folder; give a data file or a folder written by Dataset.save_to_disk "
                "(a whole DatasetDict or a folder of split files goes in task_args.path)"
            )
        return RowSet(loaded, str(path), path.name)
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"dataset file {path}: unsupported extension {path.suffix!r} ({_FORMATS_HINT})")
    if path.stat().st_size == 0:
        raise DatasetError(f"dataset file {path} has no rows")
    if kind in ("json", "csv"):
        _check_utf8(path)
    if kind == "json":
        _check_json_layout(path)
    try:
        with _quiet():
            data = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # the builders raise many types; the file is what the user must fix
        raise _diagnose(path, kind, err) from err
    if path.suffix.lower() == ".json" and len(data) == 1 and _first_chars(path, 1) == "{":
        raise DatasetError(f"{path} holds a single JSON object; it must hold a JSON list of objects (or one per line)")
    return RowSet(data, str(path), path.stem)


def _load_saved(folder: Path) -> Any:
    """The `Dataset` or `DatasetDict` in a ``save_to_disk`` folder; None for any other folder."""
    import datasets

    if not ((folder / "dataset_dict.json").exists() or (folder / "state.json").exists()):
        return None
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as err:
        raise DatasetError(f"could not read the save_to_disk folder {folder}: {_describe(err)}") from err


def _read_folder(folder: Path) -> dict[str, RowSet]:
    """The splits of a save_to_disk folder, or of a folder of data files named after their splits."""
    import datasets

    loaded = _load_saved(folder)
    if isinstance(loaded, datasets.Dataset):
        return {"train": RowSet(loaded, str(folder), folder.name)}
    if loaded is None:
        try:
            with _quiet():
                loaded = datasets.load_dataset(str(folder))
        except Exception as err:
            for file in sorted(f for f in folder.rglob("*") if f.suffix.lower() in FILE_FORMATS):
                _read_file(file, "path")  # names the file, and the line when it can
            raise DatasetError(
                f"could not read the folder {folder} ({_describe(err)}); a folder must be written by save_to_disk "
                f"or hold data files named after their splits (train.jsonl, test.parquet, ...)"
            ) from err
    return {name: RowSet(data, f"{folder}[{name}]", name) for name, data in loaded.items()}


def _hub_offline() -> str | None:
    """Why the hub cannot be asked (then `datasets` reads only its cache), or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    return None if hub_reachable() else "the hub is unreachable"


def _read_hub(repo: str, subset: str | None) -> dict[str, RowSet]:
    """The splits of a hub dataset, from its cache when the hub is offline (then without any retry)."""
    import datasets

    where = f"hub:{repo}" + (f"/{subset}" if subset else "")
    offline = _hub_offline()
    try:
        with _offline_mode(offline is not None):
            loaded = datasets.load_dataset(repo, subset)
    except ConnectionError as err:
        why = offline or f"the hub did not answer ({err})"
        raise HubUnavailable(
            f"could not load dataset {repo!r}: {why}, it is not in the hub cache, and there is no local file or "
            "folder of that name; set task_args.path to a local copy (a save_to_disk folder or a data file), "
            "or load it once with a network connection"
        ) from err
    except FileNotFoundError as err:  # DatasetNotFoundError: no such repository, or a gated one
        raise DatasetError(
            f"could not load dataset {repo!r}: {err} (neither a hub dataset you can read nor a local path)"
        ) from err
    except Exception as err:  # e.g. a missing or unknown configuration
        hint = " (set task_args.subset to pick one)" if subset is None and "config" in str(err).lower() else ""
        raise DatasetError(f"could not load dataset {where}: {_describe(err)}{hint}") from err
    return {name: RowSet(data, f"{where}[{name}]", name) for name, data in loaded.items()}


def _read_path(path: str, subset: str | None) -> tuple[dict[str, RowSet], str]:
    """The splits ``task_args.path`` names, and a short name of the source."""
    local = Path(path).expanduser()
    if local.exists() and subset is not None:
        raise InputError(f"task_args.subset picks a hub dataset's configuration; {local} is a local path")
    if local.is_file():
        return {"train": _read_file(local, "path")}, str(local)
    if local.is_dir():
        return _read_folder(local), str(local)
    if not HUB_ID.fullmatch(path) or local.suffix.lower() in FILE_FORMATS:
        raise MissingFileError(f"task_args.path {path} does not exist (and it is not a hub dataset id)")
    return _read_hub(path, subset), f"hub:{path}"


def _pick_splits(
    found: dict[str, RowSet], source: str, train_split: str | None, val_split: str | None, test_split: str | None
) -> dict[str, RowSet]:
    """Our train/val/test among the source's splits; val and test may be absent (they are held out later)."""
    wanted = {"train": (train_split, ("train",)), "val": (val_split, VAL_SPLIT_NAMES), "test": (test_split, ("test",))}
    chosen: dict[str, str] = {}
    for ours, (asked, defaults) in wanted.items():
        if asked is not None and asked not in found:
            raise DatasetError(f"{source} has no split {asked!r} (it has {sorted(found)}); set task_args.{ours}_split")
        name = asked if asked is not None else next((n for n in defaults if n in found), None)
        if name is None and ours == "train":
            raise DatasetError(f"{source} has no split 'train' (it has {sorted(found)}); set task_args.train_split")
        if name is not None:
            chosen[ours] = name
    names = list(chosen.values())
    if len(set(names)) < len(names):
        raise InputError(f"task_args: train, val and test must be different splits of {source}, got {chosen}")
    return {ours: found[name] for ours, name in chosen.items()}


# --- rows to samples -------------------------------------------------------------------------------------


def _template_fields(template: str) -> tuple[str, ...]:
    """The columns a ``str.format`` template names (``{a.b}``/``{a[0]}`` name column ``a``)."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(
            f"task_args.prompt_template is not a valid format string ({err}); write {{{{ for a {{"
        ) from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        column = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not column or column.isdigit():
            raise InputError(f"task_args.prompt_template: {{{name}}} names no column; write e.g. {{question}}")
        if column not in fields:
            fields.append(column)
    if not fields:
        raise InputError("task_args.prompt_template names no column: every prompt would be the same text")
    return tuple(fields)


def _messages(value: Any, origin: str, n: int, field: str) -> list[dict[str, str]]:
    """A chat prompt: a non-empty list of ``{role, content}`` messages with string values."""
    messages = records_of(value)  # a list of dicts, or a dict of lists from a Sequence feature
    if not messages:
        raise DatasetError(f"{origin} row {n}: {field!r} is an empty list of messages")
    out = []
    for i, message in enumerate(messages):
        # Unifying columns gives every message every key any message has: None marks an absent one.
        kept = {k: v for k, v in message.items() if v is not None} if isinstance(message, Mapping) else None
        if (
            kept is None
            or not isinstance(kept.get("role"), str)
            or not kept["role"].strip()
            or not isinstance(kept.get("content"), str)
            or not all(isinstance(v, str) for v in kept.values())
        ):
            raise DatasetError(
                f"{origin} row {n}: {field!r}[{i}] must be a {{role, content}} message with string values, "
                f"got {message!r:.80}"
            )
        out.append(kept)
    return out


def _references(value: Any, origin: str, n: int, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(r, str) for r in value):
        return tuple(value)
    raise DatasetError(f"{origin} row {n}: {field!r} must be a string or a list of strings, got {value!r:.60}")


@dataclass(frozen=True)
class Columns:
    """How a row becomes a `Sample`. A field the user named must exist; the defaults are optional."""

    prompt: str
    template: str | None
    template_fields: tuple[str, ...]  # the columns the template names
    references: str
    id: str
    named: tuple[str, ...]  # the fields given explicitly

    def check(self, names: list[str], origin: str) -> None:
        """Errors for columns that no row has, before any row is read."""
        if self.template is not None:
            missing = [c for c in self.template_fields if c not in names]
            if missing:
                raise DatasetError(
                    f"task_args.prompt_template uses column {', '.join(map(repr, missing))}, which {origin} lacks "
                    f"(its columns: {sorted(names)})"
                )
        elif self.prompt not in names:
            raise DatasetError(
                f"{origin} has no {self.prompt!r} field (its columns: {sorted(names)}); "
                "set task_args.prompt_field to the right column, or give task_args.prompt_template"
            )
        for label, column in (("references_field", self.references), ("id_field", self.id)):
            if label in self.named and column not in names:
                raise DatasetError(
                    f"{origin} has no {column!r} field for task_args.{label} (its columns: {sorted(names)})"
                )

    def sample(self, row: dict[str, Any], origin: str, n: int, default_id: str) -> Sample:
        prompt = self._from_template(row, origin, n) if self.template is not None else self._prompt(row, origin, n)
        sample_id = row.get(self.id)
        # With a template the prompt column is ordinary data (the reward may want the bare question).
        skip = (self.references, self.id) if self.template is not None else (self.prompt, self.references, self.id)
        return Sample(
            id=str(sample_id) if sample_id is not None else default_id,
            prompt=prompt,
            references=_references(row.get(self.references), origin, n, self.references),
            meta={k: v for k, v in row.items() if k not in skip},
        )

    def _prompt(self, row: dict[str, Any], origin: str, n: int) -> str | list[dict[str, str]]:
        value = row.get(self.prompt)
        if value is None:
            present = sorted(k for k, v in row.items() if v is not None)
            raise DatasetError(f"{origin} row {n} has no {self.prompt!r} field (it has {present})")
        if isinstance(value, list | Mapping):
            return _messages(value, origin, n, self.prompt)
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(
                f"{origin} row {n}: {self.prompt!r} must be a non-empty string or a list of {{role, content}} "
                f"messages, got {value!r:.60}"
            )
        return value

    def _from_template(self, row: dict[str, Any], origin: str, n: int) -> str:
        assert self.template is not None
        for column in self.template_fields:
            if row.get(column) is None:
                raise DatasetError(f"{origin} row {n}: field {column!r} (used by task_args.prompt_template) is missing")
        try:
            text = self.template.format(**row)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as err:
            raise DatasetError(f"{origin} row {n}: task_args.prompt_template failed: {err!r}") from None
        if not text.strip():
            raise DatasetError(f"{origin} row {n}: task_args.prompt_template gives an empty prompt")
        return text


def _to_samples(rows: RowSet, columns: Columns) -> list[Sample]:
    if len(rows.data) == 0:
        raise DatasetError(f"dataset {rows.origin} has no rows")
    columns.check(list(rows.data.column_names), rows.origin)
    try:
        records = rows.data.to_list()
    except Exception as err:  # a column pyarrow cannot turn into Python values
        raise DatasetError(f"could not read the rows of {rows.origin}: {_describe(err)}") from err
    # Rows count from 1, as a file's lines do.
    return [columns.sample(row, rows.origin, n, f"{rows.prefix}-{n}") for n, row in enumerate(records, start=1)]


# --- held-out splits -------------------------------------------------------------------------------------


def _fractions(holdout: Any) -> dict[str, float]:
    """``holdout``: one fraction for val and test each, or a mapping ``{val: f, test: f}``."""
    if isinstance(holdout, Mapping):
        unknown = sorted(set(holdout) - {"val", "test"})
        if unknown:
            raise InputError(f"task_args.holdout takes the keys 'val' and 'test', got {unknown}")
        fractions = {s: holdout.get(s, DEFAULT_HOLDOUT) for s in ("val", "test")}
    else:
        fractions = {"val": holdout, "test": holdout}
    for split, f in fractions.items():
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f < 1:
            raise InputError(f"task_args.holdout for {split} must be a fraction in (0, 1), got {f!r}")
    if sum(fractions.values()) >= 1:
        raise InputError(f"task_args.holdout leaves no rows for training: {fractions}")
    return fractions


def _hold_out(
    splits: dict[str, list[Sample]], fractions: dict[str, float], seed: int, source: str
) -> dict[str, list[Sample]]:
    """Val and test, where the data lacks them, drawn from train with ``seed`` (each keeps the file's order)."""
    missing = [s for s in ("val", "test") if s not in splits]
    if not missing:
        return splits
    train = splits["train"]
    counts = {s: max(1, int(len(train) * fractions[s])) for s in missing}
    if sum(counts.values()) >= len(train):
        raise DatasetError(
            f"{source} has {len(train)} rows: too few to hold out {' and '.join(missing)} and keep one to train on "
            f"(give {' and '.join(missing)} data, or more rows)"
        )
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    out, start = dict(splits), 0
    for split in missing:
        out[split] = [train[i] for i in sorted(order[start : start + counts[split]])]
        start += counts[split]
    out["train"] = [train[i] for i in sorted(order[start:])]
    return out


# --- the task --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_strings(**args: Any) -> None:
    for name, value in args.items():
        if value is not None and not isinstance(value, str | os.PathLike):
            quote = " (quote it: YAML read it as something else)" if name == "prompt_template" else ""
            raise InputError(f"task_args.{name} must be a string, got {value!r:.60}{quote}")


def _dataset_task(
    task: str,
    /,
    path: str | os.PathLike[str] | None = None,
    subset: str | None = None,
    train: str | os.PathLike[str] | None = None,
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    prompt_field: str | None = None,
    prompt_template: str | None = None,
    references_field: str | None = None,
    id_field: str | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    test_split: str | None = None,
    holdout: float | dict[str, float] = DEFAULT_HOLDOUT,
    seed: int = 0,
    max_new_tokens: int = 32,
) -> Task:
    """Prompts from a hub dataset, a save_to_disk folder or data files; the reward comes from the config."""
    fields = dict(prompt_field=prompt_field, references_field=references_field, id_field=id_field)
    split_names = dict(train_split=train_split, val_split=val_split, test_split=test_split)
    sources = dict(path=path, subset=subset, train=train, val=val, test=test)
    _check_strings(**sources, **split_names, **fields, prompt_template=prompt_template)
    if prompt_field is not None and prompt_template is not None:
        raise InputError("give task_args.prompt_field or task_args.prompt_template, not both")
    if not _is_int(seed):
        raise InputError(f"task_args.seed must be an integer, got {seed!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise InputError(f"task_args.max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    fractions = _fractions(holdout)
    columns = Columns(  # a malformed template fails here, before any data is read
        prompt=prompt_field or "prompt",
        template=prompt_template,
        template_fields=_template_fields(prompt_template) if prompt_template is not None else (),
        references=references_field or "references",
        id=id_field or "id",
        named=tuple(k for k, v in fields.items() if v is not None),
    )
    rows, source = _rows(task, sources, split_names)
    splits = _hold_out({s: _to_samples(r, columns) for s, r in rows.items()}, fractions, seed, source)
    return Task(
        name=task,
        splits=splits,
        reward=None,
        description=f"prompts from {source}",
        generation={"max_new_tokens": max_new_tokens},
    )


def _rows(task: str, sources: dict[str, Any], split_names: dict[str, str | None]) -> tuple[dict[str, RowSet], str]:
    """The rows of each split the arguments name, and a short name of the source."""
    path, subset, train, val, test = (sources[k] for k in ("path", "subset", "train", "val", "test"))
    if path is None and train is None:
        what = {
            "path": "task_args.path (a hub dataset id, a save_to_disk folder, or a data file)",
            "train": "task_args.train (a .jsonl, .json, .csv, .parquet or .arrow file, with optional val and test)",
        }
        first, second = ("train", "path") if task == "file" else ("path", "train")
        raise InputError(f"task {task!r} needs {what[first]} or {what[second]}")
    if path is not None:
        if train is not None or val is not None or test is not None:
            raise InputError("give task_args.path or task_args.train (with val and test), not both")
        found, source = _read_path(os.fspath(path), subset)
        return _pick_splits(found, source, **split_names), source
    given = [k for k, v in {"subset": subset, **split_names}.items() if v is not None]
    if given:
        raise InputError(f"task_args.{given[0]} applies to task_args.path; train, val and test name one split each")
    files = {"train": train, "val": val, "test": test}
    return {s: _read_file(p, s) for s, p in files.items() if p is not None}, str(train)


dataset_task = functools.partial(_dataset_task, "dataset")
file_task = functools.partial(_dataset_task, "file")  # the older name; same arguments
register_task(
    "dataset",
    "your own data: a hub id, a save_to_disk folder or JSONL/JSON/CSV/parquet/arrow files (task_args: path, "
    "prompt_field or prompt_template, references_field, ...)",
)(dataset_task)
register_task("file", "alias of task 'dataset' (task_args: train, val, test, prompt_field, ...)")(file_task)
