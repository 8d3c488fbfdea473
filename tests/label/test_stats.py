"""`lmgym label --stats` on hand-made label files whose κ, position bias and win rate are computed by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmgym.cli import app
from lmgym.label.stats import label_stats

from .helpers import write_jsonl

EVAL = {"kind": "eval", "sample_id": "s", "a": "runs/new", "b": "runs/old"}


def judgment(n: int, item: str, who: str, winner: str, left: str = "a", source: dict | None = None) -> dict:
    """A row as `lmgym label` writes it: ``winner`` is "a", "b" or "tie"; ``left`` the side shown first."""
    row = {"id": f"j{n}-{who}", "judgment": "tie" if winner == "tie" else "pick", "prompt": f"p {item}"}
    if winner == "tie":
        row["responses"] = [f"a {item}", f"b {item}"]
        row["winner"] = "tie"
    else:
        row |= {"chosen": f"{winner} {item}", "rejected": f"{'b' if winner == 'a' else 'a'} {item}", "winner": winner}
    order = [left, "b" if left == "a" else "a"]
    return row | {"item": item, "shown_order": order, "annotator": who, "time": "t", "source": source or {}}


def test_two_annotators_cohen_kappa_and_position_bias(tmp_path: Path) -> None:
    alice = "aaaaabbbbb"
    bob = "aaaabbbbba"  # agrees on 8 of 10: p_o = 0.8, p_e = 0.5·0.5 + 0.5·0.5 = 0.5, κ = (0.8 − 0.5)/0.5 = 0.6
    rows = []
    for i in range(10):  # the winner is shown first in 14 of the 20 picks
        rows.append(judgment(i, f"i{i}", "alice", alice[i], left=alice[i] if i < 7 else "ab"[alice[i] == "a"]))
        rows.append(judgment(i, f"i{i}", "bob", bob[i], left=bob[i] if i < 7 else "ab"[bob[i] == "a"]))
    rows.append(judgment(10, "i10", "alice", "tie"))
    rows.append({**judgment(11, "i11", "alice", "a"), "judgment": "skip"})
    rows.append(judgment(12, "i12", "alice", "b"))
    rows.append({"id": "u", "judgment": "undo", "undoes": "j12-alice", "annotator": "alice", "item": "i12"})
    stats = label_stats(write_jsonl(tmp_path / "labels.jsonl", rows))
    assert stats["annotators"] == {"alice": {"pick": 10, "tie": 1, "skip": 1, "undone": 1},
                                   "bob": {"pick": 10, "tie": 0, "skip": 0, "undone": 0}}  # fmt: skip
    agreement = stats["agreement"]
    assert agreement["method"] == "cohen" and agreement["items"] == 10
    assert agreement["kappa"] == pytest.approx(0.6) and agreement["observed_agreement"] == pytest.approx(0.8)
    bias = stats["position_bias"]
    assert (bias["left_wins"], bias["picks"]) == (14, 20)
    # two-sided binomial test at 1/2: 2·P(X ≥ 14), X ~ Bin(20, 1/2)
    assert bias["p_value"] == pytest.approx(2 * sum(math.comb(20, k) for k in range(14, 21)) / 2**20)
    assert bias["ci95"][0] < 0.7 < bias["ci95"][1]
    assert stats["eval"] == []


def test_three_annotators_fleiss_kappa(tmp_path: Path) -> None:
    # Items: aaa, aab, bbb, bba → P_i = 1, 1/3, 1, 1/3 (P̄ = 2/3); p_a = p_b = 1/2 (P_e = 1/2); κ = (2/3 − 1/2)/(1/2)
    outcomes = ["aaa", "aab", "bbb", "bba"]
    rows = [judgment(i, f"i{i}", who, o[k]) for i, o in enumerate(outcomes) for k, who in enumerate("xyz")]
    stats = label_stats(write_jsonl(tmp_path / "labels.jsonl", rows))
    assert stats["agreement"]["method"] == "fleiss" and stats["agreement"]["raters_per_item"] == 3
    assert stats["agreement"]["kappa"] == pytest.approx(1 / 3)
    assert stats["agreement"]["observed_agreement"] == pytest.approx(0.5)


def test_blind_eval_win_rate_and_the_command(tmp_path: Path) -> None:
    outcomes = "aaaaaabbtt"  # A wins 6, B wins 2, 2 ties
    rows = [judgment(i, f"i{i}", "ann", {"t": "tie"}.get(o, o), source=EVAL) for i, o in enumerate(outcomes)]
    labels = write_jsonl(tmp_path / "labels.jsonl", rows)
    result = CliRunner().invoke(app, ["label", "--stats", str(labels)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console wraps long lines
    assert "win rate 70.0% (ties as half a win; 95% CI 39.7%–89.2%)" in text
    stats = json.loads((tmp_path / "human_eval.json").read_text())
    assert (tmp_path / "human_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (e,) = stats["eval"]
    assert (e["A"], e["a_wins"], e["b_wins"], e["ties"]) == ("runs/new", 6, 2, 2)
    assert e["win_rate_a"] == pytest.approx((6 + 2 / 2) / 10) and e["win_rate_a_decisive"] == pytest.approx(6 / 8)
    # Wilson interval of 0.7 over 10: (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)
    z, p, n = 1.959963984540054, 0.7, 10
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    assert e["ci95"] == pytest.approx([center - half, center + half])
    assert e["ci95"] == pytest.approx([0.3968, 0.8922], abs=1e-4)
    assert stats["agreement"]["method"] is None  # one annotator: nothing to agree on


def test_stats_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["label", "--stats", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl" in result.output


def test_a_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(app, ["label", "pairs.jsonl", "--out", "labels.jsonl"])
    assert result.exit_code == 2 and "uvicorn: pip install 'lmgym[label]'" in result.output
