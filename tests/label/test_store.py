"""The labels file and who gets what: rows in the comparison format, undo rows the loader honours, a torn last
line cut at restart, the state rebuilt from the file, and --per-item assignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmgym.data.preferences import load_comparisons
from lmgym.data.tasks.files import DatasetError
from lmgym.label import session as session_module
from lmgym.label.session import LabelSession
from lmgym.label.sources import jsonl_pairs
from lmgym.label.store import LabelStore, read_rows

from .helpers import pair_source, write_jsonl


def open_session(tmp_path: Path, per_item: int = 1, n: int = 4) -> LabelSession:
    tmp_path.mkdir(exist_ok=True)
    items = jsonl_pairs(pair_source(tmp_path / "pairs.jsonl", n))
    return LabelSession(items, LabelStore(tmp_path / "labels.jsonl", items), per_item, seed=0)


def test_rows_are_comparisons_and_undo_is_a_row(tmp_path: Path) -> None:
    s = open_session(tmp_path)
    first = s.current("ann")
    pick = s.judge("ann", first.id, "1", rating=6, reason="clearer")
    left = {"a": first.a, "b": first.b}[s.shown_order("ann", first.id)[0]]
    assert pick["chosen"] == left and pick["rejected"] in (first.a, first.b) != pick["chosen"]
    assert pick["annotator"] == "ann" and pick["rating"] == 6 and pick["reason"] == "clearer"
    assert set(pick["shown_order"]) == {"a", "b"} and pick["source"]["kind"] == "jsonl" and pick["time"]
    tie = s.judge("ann", s.current("ann").id, "t")
    skip = s.judge("ann", s.current("ann").id, "s")
    assert tie["judgment"] == "tie" and "chosen" not in tie and len(tie["responses"]) == 2
    assert s.undo("ann", tie["id"]) is None  # only the last judgment can be undone
    assert s.undo("ann", skip["id"]) == skip
    assert s.undo("ann", skip["id"]) is None  # a repeated undo post undoes nothing more
    assert s.current("ann").id == skip["item"]  # the undone item comes back first
    last = s.judge("ann", skip["item"], "2")
    rows = read_rows(s.store.path)
    assert [r["judgment"] for r in rows] == ["pick", "tie", "skip", "undo", "pick"]
    assert rows[3]["undoes"] == skip["id"]
    assert [c.id for c in load_comparisons(s.store.path)] == [pick["id"], last["id"]]  # ties, skips, undone: out


def test_a_restart_cuts_a_torn_line_and_continues(tmp_path: Path) -> None:
    s = open_session(tmp_path)
    done = [s.judge("ann", s.current("ann").id, "1")["item"] for _ in range(2)]
    s.store.close()
    with (tmp_path / "labels.jsonl").open("ab") as f:
        f.write(b'{"id": "j-x", "judgment": "pick", "pro')
    again = open_session(tmp_path)
    assert again.store.repaired_bytes == len(b'{"id": "j-x", "judgment": "pick", "pro')
    assert again.current("ann").id not in done and again.progress("ann").mine == 2
    assert len(load_comparisons(tmp_path / "labels.jsonl")) == 2
    again.store.close()
    text = (tmp_path / "labels.jsonl").read_text()
    (tmp_path / "labels.jsonl").write_text(text.rstrip("\n"))  # a hand edit that lost the final newline ...
    assert open_session(tmp_path).store.repaired_bytes == 0  # ... keeps its last row
    assert (tmp_path / "labels.jsonl").read_text() == text


def test_one_server_per_labels_file(tmp_path: Path) -> None:
    s = open_session(tmp_path)
    with pytest.raises(FileExistsError, match="in use by another"):
        LabelStore(s.store.path, s.order)
    s.store.close()  # a killed server's lock goes with its process
    LabelStore(s.store.path, s.order).close()


def test_per_item_and_leases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    two = open_session(tmp_path / "two", per_item=2)
    assert two.current("x").id == two.current("y").id  # both may judge the same item
    assert two.current("z").id != two.current("x").id  # a third is not needed on it
    one = open_session(tmp_path / "one", per_item=1)
    a, b = one.current("a"), one.current("b")
    assert a.id != b.id
    one.judge("a", a.id, "s")  # a skip does not count towards --per-item ...
    assert one.current("c").id == a.id  # ... so the item is still open to others
    one.judge("c", a.id, "1")
    assert one.progress("a") == session_module.Progress(1, 4, 1, 4)  # a: 1 seen + 3 open
    monkeypatch.setattr(session_module, "LEASE_SECONDS", -1)  # b walked away: their item is free again
    one.current("b")
    assert one.current("d").id == b.id


def test_loader_checks_label_rows(tmp_path: Path) -> None:
    base = {"prompt": "p", "chosen": "x", "rejected": "y"}
    bad_undo = write_jsonl(tmp_path / "u.jsonl", [{"id": "1", **base}, {"judgment": "undo", "undoes": "nope"}])
    with pytest.raises(DatasetError, match=r"row 2: 'undoes'"):
        load_comparisons(bad_undo)
    bad_kind = write_jsonl(tmp_path / "k.jsonl", [{**base, "judgment": "maybe"}])
    with pytest.raises(DatasetError, match=r"row 1: 'judgment'"):
        load_comparisons(bad_kind)
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"id": "1", **base}, {"id": "2", **base, "judgment": "pick"},
                                               {"judgment": "undo", "undoes": "1"}])  # fmt: skip
    assert [c.id for c in load_comparisons(mixed)] == ["2"]
    assert json.loads(mixed.read_text().splitlines()[0])["id"] == "1"  # the file itself is never rewritten
