"""What `lmgym label` puts in front of annotators: pairs from a run folder's held-out samples, fresh samples of
its final policy, a JSONL of responses, and blind A/B pairs of two runs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from lmgym.api import train
from lmgym.data.tasks.files import DatasetError, read_rows
from lmgym.label.sources import load_items

from .helpers import write_jsonl


def fake_run(folder: Path, finals: dict[str, str], firsts: dict[str, str] | None = None) -> Path:
    """A run folder as training leaves it: config.yaml and samples.jsonl with iteration-0 and final records."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("task: toy\nmodel:\n  name: tiny\n", encoding="utf-8")
    rows = [{"iteration": 0, "kind": "eval", "id": sid, "prompt": f"prompt {sid}", "generation": g, "reward": 0.0}
            for sid, g in (firsts or {}).items()]  # fmt: skip
    rows.append({"iteration": 5, "kind": "train", "loss": 1.0})
    rows += [{"iteration": 9, "kind": "eval", "final": True, "id": sid, "prompt": f"prompt {sid}", "generation": g,
              "reward": 1.0} for sid, g in finals.items()]  # fmt: skip
    write_jsonl(folder / "samples.jsonl", rows)
    return folder


def test_run_folder_pairs_iteration_0_with_final(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", {"s1": " new one", "s2": " same", "s3": " new three"},
                   {"s1": " old one", "s2": " same", "s3": " old three"})  # fmt: skip
    items = load_items([run], None, False, 0, tmp_path / "labels.jsonl")
    assert [(it.prompt, it.a, it.b) for it in items] == [("prompt s1", " old one", " new one"),
                                                         ("prompt s3", " old three", " new three")]  # fmt: skip
    assert items[0].source == {"kind": "run", "run": str(run), "sample_id": "s1", "a": "iteration 0",
                               "b": "final (iteration 9)"}  # fmt: skip
    assert not items[0].blind_eval


def test_two_runs_make_blind_pairs_matched_by_sample_id(tmp_path: Path) -> None:
    run_a = fake_run(tmp_path / "a", {"s1": " a1", "s2": " a2", "s3": " same"})
    run_b = fake_run(tmp_path / "b", {"s2": " b2", "s1": " b1", "s3": " same", "s9": " b9"})
    items = load_items([run_a, run_b], None, True, 0, tmp_path / "labels.jsonl")
    assert [(it.a, it.b) for it in items] == [(" a1", " b1"), (" a2", " b2")]
    assert all(it.blind_eval and it.source["a"] == str(run_a) for it in items)
    with pytest.raises(ValueError, match="--eval"):
        load_items([run_a, run_b], None, False, 0, tmp_path / "labels.jsonl")
    with pytest.raises(ValueError, match="two run folders"):
        load_items([run_a], None, True, 0, tmp_path / "labels.jsonl")


def test_jsonl_rows_give_all_pairs(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "r.jsonl", [{"id": "q", "prompt": "p", "responses": ["x", "y", "x", "z"]}])
    items = load_items([source], None, False, 0, tmp_path / "labels.jsonl")
    assert [(it.a, it.b) for it in items] == [("x", "y"), ("x", "z"), ("y", "z")]  # the repeated "x" once
    assert len({it.id for it in items}) == 3
    write_jsonl(source, [{"prompt": "p", "responses": "x"}])
    with pytest.raises(DatasetError, match="line 1: 'responses'"):
        load_items([source], None, False, 0, tmp_path / "labels.jsonl")
    with pytest.raises(ValueError, match="--sample"):
        load_items([source], 3, False, 0, tmp_path / "labels.jsonl")


def test_unfinished_run_is_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", {})
    with pytest.raises(FileNotFoundError, match="no final evaluation"):
        load_items([run], None, False, 0, tmp_path / "labels.jsonl")


def test_sample_k_from_the_final_policy_once(tmp_path: Path) -> None:
    """--sample K: K fresh samples per held-out prompt from a (tiny) finished run, kept for a restart."""
    overrides = ["task=toy", "model=tiny", "iterations=1", "rollout.batch_size=4", "eval.num_prompts=3", "threads=1",
                 f"run_dir={tmp_path}", "name=tiny"]  # fmt: skip
    result = train(None, overrides, console=Console(file=io.StringIO()))
    out = tmp_path / "labels.jsonl"
    items = load_items([result.run_dir], 3, False, 0, out)
    held_out = {r["id"] for r in read_rows(result.run_dir / "samples.jsonl") if r.get("final")}
    assert {it.source["sample_id"] for it in items} == held_out and len(held_out) == 3
    assert 3 <= len(items) <= 9 and all(it.a != it.b for it in items)  # up to 3 pairs among 3 samples, per prompt
    cache = tmp_path / "labels.samples.jsonl"
    assert cache.exists()
    assert load_items([result.run_dir], 3, False, 0, out) == items  # a restart shows the same texts
