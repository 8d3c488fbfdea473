"""The labels file: one JSON line per judgment, appended and fsynced before the annotator sees the next item.

Rows are comparisons in the format `lmgym rm train` and DPO read (``{prompt, chosen, rejected}``), plus who
judged, when, the order the two responses were shown in and where they came from:

- ``"judgment": "pick"``: ``chosen``/``rejected``, ``winner`` ("a" or "b": the item's side that won);
- ``"judgment": "tie"`` and ``"judgment": "skip"``: ``responses`` [a, b]; trainers leave them out;
- ``"judgment": "undo"``: ``undoes`` names an earlier row, which the loaders then drop.

Nothing is ever rewritten, so a kill at any moment loses at most the line being written; on opening, a last
line cut short (the kill's) is cut off, and the state is rebuilt from the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmgym.checkpoint import fsync_dir
from lmgym.data.tasks.files import DatasetError
from lmgym.errors import RunExistsError
from lmgym.label.sources import Item

KINDS = ("pick", "tie", "skip")


def new_id() -> str:
    return f"j-{uuid.uuid4().hex[:16]}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _torn(tail: bytes) -> bool:
    """Whether the text after the last newline is a line cut short (not a whole JSON value missing its newline)."""
    try:
        json.loads(tail)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return False


def parse_lines(path: Path, data: bytes) -> list[dict[str, Any]]:
    """The rows of the file's lines; a last line cut short by a kill is left out."""
    rows = []
    lines = data.split(b"\n")
    if lines[-1].strip() and _torn(lines[-1]):
        lines.pop()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path} line {n} is not valid JSON ({err}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {n} is a JSON {type(row).__name__}, not an object")
        rows.append(row)
    return rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a labels file, without changing it."""
    return parse_lines(path, path.read_bytes())


def active_rows(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The judgments (pick, tie, skip) that no undo row withdrew, by id, in file order."""
    active: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("judgment") == "undo":
            active.pop(str(row.get("undoes")), None)
        elif row.get("judgment") in KINDS:
            active[str(row["id"])] = row
    return active


def judgment_row(
    item: Item,
    annotator: str,
    kind: str,
    winner: str | None,
    shown_order: tuple[str, str],
    rating: int | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """The row of one judgment of ``item`` (``winner``: "a" or "b" for a pick)."""
    row: dict[str, Any] = {"id": new_id(), "judgment": kind, "prompt": item.prompt}
    if kind == "pick":
        texts = {"a": item.a, "b": item.b}
        row |= {"chosen": texts[winner], "rejected": texts["b" if winner == "a" else "a"], "winner": winner}
    else:
        row |= {"responses": [item.a, item.b]}
        if kind == "tie":
            row["winner"] = "tie"
    row |= {"item": item.id, "shown_order": list(shown_order), "annotator": annotator, "time": now()}
    row["source"] = item.source
    if rating is not None:
        row["rating"] = rating
    if reason:
        row["reason"] = reason
    return row


class LabelStore:
    """The labels file and the state it implies: which annotator judged which item, and each one's last judgment.

    Only rows of ``items`` count (a file may also hold judgments of another source)."""

    def __init__(self, path: Path, items: Iterable[Item]) -> None:
        self.path = Path(path)
        self.known = {it.id for it in items}
        self.by_item: dict[str, dict[str, dict[str, Any]]] = {}  # item id → annotator → active row
        self.stacks: dict[str, list[str]] = {}  # annotator → ids of their active judgments, oldest first
        self.active: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._file = self.path.open("a", encoding="utf-8")
        if created:  # the new file's directory entry must survive a crash too
            fsync_dir(self.path.parent)
        try:  # two servers on one file would each miss the other's judgments; a killed one's lock dies with it
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RunExistsError(f"{self.path} is in use by another `lmgym label` server") from None
        self.repaired_bytes = self._repair()
        for row in read_rows(self.path):
            self._apply(row)

    def _repair(self) -> int:
        """End the file with a newline before appending: cut a last line that a kill left unfinished, or give a
        whole last row (a file edited by hand) its newline. Returns how many bytes were cut."""
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        torn = _torn(data[keep:])
        with self.path.open("r+b") as f:
            if torn:
                f.truncate(keep)
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep if torn else 0

    def _apply(self, row: dict[str, Any]) -> None:
        kind = row.get("judgment")
        if kind == "undo":
            undone = self.active.pop(str(row.get("undoes")), None)
            if undone is not None:
                self.by_item[undone["item"]].pop(undone["annotator"], None)
                self.stacks[undone["annotator"]].remove(undone["id"])
        elif kind in KINDS and row.get("item") in self.known and isinstance(row.get("annotator"), str):
            if row["annotator"] in self.by_item.get(row["item"], {}):
                return  # a second judgment of the same item by the same annotator (never written by the app)
            self.active[str(row["id"])] = row
            self.by_item.setdefault(row["item"], {})[row["annotator"]] = row
            self.stacks.setdefault(row["annotator"], []).append(str(row["id"]))

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` durably (one line, flushed and fsynced), then apply it to the state."""
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._apply(row)

    def close(self) -> None:
        self._file.close()

    # --- queries ---------------------------------------------------------------------------------------

    def judges(self, item_id: str) -> dict[str, dict[str, Any]]:
        """Annotator → active row (pick, tie or skip) for ``item_id``."""
        return self.by_item.get(item_id, {})

    def counted(self, item_id: str) -> int:
        """Judgments of the item that count towards --per-item (skips do not)."""
        return sum(row["judgment"] != "skip" for row in self.judges(item_id).values())

    def last(self, annotator: str) -> dict[str, Any] | None:
        stack = self.stacks.get(annotator)
        return self.active[stack[-1]] if stack else None

    def done_by(self, annotator: str) -> int:
        return len(self.stacks.get(annotator, []))
