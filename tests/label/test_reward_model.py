"""The loop closed: judgments made through the labelling session train a reward model with `lmgym rm train`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lmgym.cli import app
from lmgym.config import load_config
from lmgym.label.session import LabelSession
from lmgym.label.sources import jsonl_pairs
from lmgym.label.store import LabelStore

from .helpers import write_jsonl

GOOD = ["great fun", "a wonderful cast", "the best film", "brilliant and beautiful", "I love it"]
BAD = ["boring and dull", "an awful mess", "the worst plot", "terrible acting", "weak and poor"]


def test_labels_train_a_reward_model(tmp_path: Path) -> None:
    rows = [{"prompt": f"Review {i}:", "responses": [f" {GOOD[i % 5]} {i}", f" {BAD[i % 5]} {i}"]} for i in range(24)]
    items = jsonl_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows))
    labels = tmp_path / "labels.jsonl"
    session = LabelSession(items, LabelStore(labels, items), per_item=1, seed=0)
    for n in range(len(items)):  # a rater who prefers the positive review, with a tie, a skip and an undo
        item = session.current("rater")
        good_left = session.shown_order("rater", item.id)[0] == "a"  # side "a" is the positive response
        row = session.judge("rater", item.id, "t" if n == 3 else "s" if n == 5 else "1" if good_left else "2")
        if n == 7:
            session.undo("rater", row["id"])
            session.judge("rater", item.id, "1" if good_left else "2")
    session.store.close()
    picks = len(items) - 2

    recipe = Path(__file__).parents[2] / "configs/rlhf/human-2-rm.yaml"  # the documented step, its data replaced
    config = load_config(recipe)
    assert config.rm.data.endswith(".jsonl") and config.rm.loss == "pairwise"
    args = ["rm", "train", str(recipe), "--set", f"rm.data={labels}", "--set", "rm.model=tiny",
            "--set", "task=toy", "--set", "rm.lr=1e-3", "--set", "rm.epochs=3", "--set", "threads=1",
            "--set", f"run_dir={tmp_path}", "--set", "name=human-rm"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "human-rm" / "reward_model.json").read_text())
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_eval"] == picks  # ties, skips and the undone one: out
    assert meta["data"] == str(labels)
