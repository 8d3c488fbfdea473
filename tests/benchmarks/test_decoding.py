"""benchmarks/decoding.py on the tiny model: every variant is timed, the static cache and plain products sample
the dynamic cache's tokens from the same seed, and the decoding step's matmul ceiling is a fraction of the peak."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the harness is not in the library

from decoding import main

from lmgym.environment import machine


def test_decoding_benchmark_on_the_tiny_model() -> None:
    line = main(
        [
            "--model",
            "tiny",
            "--prompts",
            "2",
            "--k",
            "2",
            "--new-tokens",
            "4",
            "--rounds",
            "1",
            "--ceiling-rows",
            "2,16",
        ]
    )
    assert set(line["seconds"]) == {"dynamic", "plain products", "static", "static+compile"}
    assert all(s > 0 for s in line["seconds"].values())
    assert line["ratio_to_dynamic"]["dynamic"] == 1.0
    same = line["same_tokens_as_dynamic"]  # a tiny model: no rounding difference flips a draw
    assert same["static"] and same["plain products"]
    assert line["compile_seconds"] > 0
    assert set(line["ceiling_fraction_by_rows"]) == {2, 4, 16}  # the 4 rows decoded too
    assert line["ceiling_fraction_by_rows"][4] == line["decode_matmul_ceiling_fraction"]
    assert 0 < line["decode_matmul_ceiling_fraction"] < 10 and math.isfinite(line["matmul_peak_gflops"])
    assert line["machine"] == machine()
