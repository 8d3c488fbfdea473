"""Seconds per phase of one PPO iteration, and the update's share of the fp32 matmul peak.

    python benchmarks/speed.py                      # the bundled SmolLM2-135M, batch 16 × 24 tokens
    python benchmarks/speed.py --model tiny --batch 4 --new-tokens 6 --threads 1

Prints a table and, last, one JSON line with the results (same as `lmgym bench speed`).
"""

from __future__ import annotations

import argparse
import logging

from rich.console import Console

from lmgym.bench.speed import run_speed_benchmark


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="prompts per iteration (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens generated per prompt (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed iterations after one warm-up (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run_speed_benchmark(
        model=args.model,
        batch=args.batch,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        console=Console(),
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
