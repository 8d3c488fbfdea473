"""Comparison / scored-text / demonstration files, the hidden-rule generator and ranking logged completions."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from lmgym.data.preferences import (
    Comparison,
    ScoredText,
    comparisons_from_scored,
    demonstrations_from_references,
    hidden_rule_comparisons,
    load_comparisons,
    load_demonstrations,
    load_scored_texts,
    rank_by_rule,
    write_jsonl,
)
from lmgym.data.rows import DatasetError
from lmgym.data.sample import Sample
from lmgym.models.tiny import tiny_tokenizer
from lmgym.rewards.lexicon import LexiconRule


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_three_comparison_shapes(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "c.jsonl",
        [
            {"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 2},
            {"prompt": "p", "responses": ["a", "b", "c"]},
            {"prompt": "p", "responses": ["a", "b", "c"], "best": 2},
        ],
    )
    pair, ranking, choice = load_comparisons(path)
    assert pair.responses == ("good", "bad") and pair.margin == 2.0 and pair.pairs() == [(0, 1)]
    assert ranking.pairs() == [(0, 1), (0, 2), (1, 2)]  # all K-choose-2 of a ranking
    assert choice.responses == ("c", "a", "b") and not choice.ranked
    assert choice.pairs() == [(0, 1), (0, 2)]  # only "the best beats each other one"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "p", "chosen": "x"}, "row 1 has no 'rejected'"),
        ({"prompt": "p", "chosen": "x", "rejected": "x"}, "same text"),
        ({"prompt": "p", "responses": ["a"]}, "at least 2"),
        ({"prompt": "p", "responses": ["a", "b"], "best": 5}, "'best' must be an index"),
        ({"prompt": "p"}, "needs 'chosen' and 'rejected'"),
        ({"prompt": "p", "chosen": "x", "rejected": "y", "margin": "big"}, "'margin' must be a finite number"),
    ],
)
def test_bad_comparison_rows_name_row_and_field(tmp_path: Path, row: dict, expected: str) -> None:
    path = write_rows(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DatasetError, match=expected) as err:
        load_comparisons(path)
    assert str(path) in str(err.value)


def test_scored_texts_and_round_trip(tmp_path: Path) -> None:
    records = [
        ScoredText("a", "p", " x", reward=0.5),
        ScoredText("b", "p", " y", token_rewards=(0.0, 1.0), completion_ids=(7, 1)),
    ]
    assert load_scored_texts(write_jsonl(tmp_path / "s.jsonl", records)) == records
    with pytest.raises(DatasetError, match="exactly one of 'reward' or 'token_rewards'"):
        load_scored_texts(
            write_rows(tmp_path / "both.jsonl", [{"prompt": "", "completion": "x", "reward": 1, "token_rewards": [1]}])
        )
    with pytest.raises(DatasetError, match="2 'token_rewards' for 3 'completion_ids'"):
        load_scored_texts(
            write_rows(
                tmp_path / "len.jsonl",
                [{"prompt": "", "completion": "x", "token_rewards": [1, 2], "completion_ids": [1, 2, 3]}],
            )
        )
    comparisons = [Comparison("c", "p", ("a", "b", "c")), Comparison("d", "p", ("x", "y"), ranked=False)]
    assert load_comparisons(write_jsonl(tmp_path / "c.jsonl", comparisons)) == comparisons


def test_demonstrations(tmp_path: Path) -> None:
    demos = load_demonstrations(write_rows(tmp_path / "d.jsonl", [{"prompt": "", "completion": "text"}]))
    assert demos[0].completion == "text" and demos[0].prompt == ""
    with pytest.raises(DatasetError, match="no sample has a reference"):
        demonstrations_from_references([Sample("s", "p")])


def test_rank_by_rule_orders_and_drops_ties() -> None:
    c = rank_by_rule("id", "p", ["a", "b", "c", "d"], [0.1, 0.9, 0.1, 0.5])
    assert c is not None and c.responses == ("b", "d", "a")  # "c" ties "a" and is dropped
    assert rank_by_rule("id", "p", ["a", "b"], [1.0, 1.0]) is None
    choice = rank_by_rule("id", "p", ["a", "b", "c"], [0.0, 2.0, 1.0], ranked=False)
    assert choice is not None and choice.responses == ("b", "a", "c") and not choice.ranked


def test_noisy_rater_follows_bradley_terry() -> None:
    # A pair whose score gap is 1 with noise 1 is ordered correctly with probability σ(1) ≈ 0.731.
    rng = random.Random(0)
    right = sum(
        rank_by_rule("i", "p", ["lo", "hi"], [0.0, 1.0], noise=1.0, rng=rng).responses[0] == "hi" for _ in range(4000)
    )
    assert abs(right / 4000 - 0.7311) < 0.03


def test_hidden_rule_comparisons_follow_the_rule() -> None:
    rule = LexiconRule()
    prompts = [Sample(f"s{i}", f"prompt {i}") for i in range(30)]
    comparisons = hidden_rule_comparisons(prompts, rule, tiny_tokenizer(), k=4, seed=3)
    assert len(comparisons) > 20
    for c in comparisons:
        scores = [rule.text_score(r) for r in c.responses]
        assert all(a > b for a, b in itertools.pairwise(scores))


def test_comparisons_from_scored_groups_by_prompt() -> None:
    scored = [
        ScoredText("p1/0", "one", " a", 0.2),
        ScoredText("p1/1", "one", " b", 0.9),
        ScoredText("p1/2", "one", " c", 0.5),
        ScoredText("p2/0", "two", " d", 0.0),
        ScoredText("p2/1", "two", " e", 0.0),  # a tie: no preference for this prompt
    ]
    (ranking,) = comparisons_from_scored(scored, "ranking")
    assert ranking.prompt == "one" and ranking.responses == (" b", " c", " a")
    (pair,) = comparisons_from_scored(scored, "pair")
    assert pair.responses == (" b", " a")
