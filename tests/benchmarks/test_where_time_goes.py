"""benchmarks/where_time_goes.py on the tiny model: the update's timed parts lie inside the update and are
found where they run, the profiled forward and backward passes contain products and attention, a decoding
step costs more than its products alone, and a profiled generation's operator shares add up."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the harness is not in the library

from where_time_goes import PARTS, main, operator_kind, operator_shares, profile_split

from lmgym.environment import machine


def test_operators_are_grouped_by_kind() -> None:
    assert operator_kind("aten::mm") == operator_kind("aten::addmm") == "products"
    assert operator_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert operator_kind("aten::mul") == operator_kind("aten::copy_") == "other"


def test_only_operators_inside_the_forward_and_backward_ranges_count() -> None:
    def event(name: str, parent: object, micros: float) -> SimpleNamespace:
        return SimpleNamespace(name=name, cpu_parent=parent, self_cpu_time_total=micros)

    forward = event("part:forward", None, 5.0)
    linear = event("aten::linear", forward, 1.0)
    copy = event("part:guards copy", None, 7.0)
    events = [
        forward,
        linear,
        event("aten::mm", linear, 3e6),  # nested below a range: counts
        event("aten::_scaled_dot_product_flash_attention_for_cpu", forward, 1e6),
        copy,
        event("aten::copy_", copy, 9e6),  # the guards' copy: outside forward and backward
        event("aten::mm", None, 4e6),  # outside every range
    ]
    assert profile_split(events) == {"products": 3.0, "attention": 1.0, "other": 1e-6}


def test_operator_shares_rank_the_largest_and_sum_the_rest() -> None:
    timings = (("add", 1.0), ("mm", 6.0), ("sub", 1.0), ("cat", 2.0))  # not in order
    averages = [SimpleNamespace(key=name, self_cpu_time_total=micros) for name, micros in timings]
    assert operator_shares(averages, top=2) == {"mm": 0.6, "cat": 0.2, "the rest": 0.2}


def test_tiny_run_splits_the_update_and_the_decoding_step(capsys) -> None:
    line = main(["--model", "tiny", "--steps", "4", "--threads", "1", "--completions", "8", "--micro-batch", "4"])
    update, decoding = line["update"], line["decoding"]
    parts = update["parts"]
    assert set(parts) == {*PARTS, "rest"}
    assert all(parts[p] > 0 for p in PARTS)  # each wrapper was reached: the rollback copy is on by default
    assert sum(parts[p] for p in PARTS) <= update["seconds"] * 1.01
    split = update["profiled_split"]
    assert split["products"] > 0 and split["attention"] > 0 and abs(sum(split.values()) - 1) < 1e-9
    assert update["products_peak_fraction"] > 0
    rows = decoding["rows"]
    assert decoding[f"per_token_seconds_{rows}"] > decoding[f"products_seconds_{rows}"] > 0
    assert decoding["per_token_seconds_1"] > decoding["products_seconds_1"] > 0
    shares = decoding["profiled_operator_shares"]
    assert "aten::mm" in shares and abs(sum(shares.values()) - 1) < 1e-9
    assert line["machine"] == machine()
    assert '"update"' in capsys.readouterr().out
