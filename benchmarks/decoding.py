"""Generation on a CPU: HF ``generate`` as lmgym runs it (a dynamic KV cache, few-row products as W·xᵀ:
models/small_products.py) against the same with plain ``F.linear`` products, a static cache and a static cache
with the decoding step compiled (``torch.compile``, inductor), taking turns in one process, and the ceiling
that the decoding step's matrix products set.

    python benchmarks/decoding.py                  # the bundled model, 32 rows (8 prompts × 4), 24 tokens
    python benchmarks/decoding.py --model tiny --rounds 2

Every variant samples from the same seed; the JSON line says whether its tokens equal the dynamic cache's
(float rounding differs between kernels, and one flipped draw changes the rest of a row). The compiled
variant's first call, which compiles, is timed apart. The ceiling (`lmgym.bench.speed.decode_matmul_ceiling`)
is the FLOP/s of one decoding step's products alone at these rows, over the square-matrix peak
(`matmul_peak`): generation cannot get past it by removing overhead alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from transformers import CompileConfig

import lmgym.models.small_products as small_products
from lmgym.bench.speed import decode_matmul_ceiling, matmul_peak, recorded_forward_flops
from lmgym.environment import machine
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, make_generation_config

OPENING = "I went to see this movie last week with a couple of friends. The plot follows a family that moves to"


def repeated_prompts(prompts: int, k: int) -> list[str]:
    """``prompts`` distinct review openings, each repeated ``k`` times (a group algorithm's rollout rows)."""
    return [f"{OPENING} town number {i} and" for i in range(prompts) for _ in range(k)]


def variants() -> dict[str, dict[str, Any]]:
    compiled = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs, which a CPU has not
    compiled._compile_all_devices = True  # transformers compiles the decoding step on a GPU only, unless told
    return {
        "dynamic": {},
        "plain products": {},  # the dynamic cache with F.linear at every row count (`plain_products`)
        "static": {"cache_implementation": "static"},
        "static+compile": {"cache_implementation": "static", "compile_config": compiled},
    }


@contextmanager
def plain_products() -> Iterator[None]:
    """Generation with ``F.linear`` for every product (lmgym's way before models/small_products.py)."""
    saved, small_products.MAX_ROWS = small_products.MAX_ROWS, 0
    try:
        yield
    finally:
        small_products.MAX_ROWS = saved


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=4, help="rows per prompt")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=4, help="timed calls per variant, taking turns")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ceiling-rows", default="8,64,128,256", help="row counts at which to report the ceiling too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
    tok = loaded.tokenizer
    prompts = repeated_prompts(args.prompts, args.k)
    enc = tok(prompts, return_tensors="pt", padding=True)
    settings = {
        name: make_generation_config(
            tok, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, top_k=0, **extra
        )
        for name, extra in variants().items()
    }

    def generate(name: str) -> tuple[torch.Tensor, float]:
        torch.manual_seed(0)
        with plain_products() if name == "plain products" else nullcontext():
            start = time.perf_counter()
            ids, _ = policy.generate(enc.input_ids, enc.attention_mask, settings[name])
            return ids, time.perf_counter() - start

    # The FLOPs are counted once, on the dynamic cache: hooks on a compiled model would make it recompile.
    with recorded_forward_flops(policy.model) as flops:
        reference, _ = generate("dynamic")  # warm-up, and the tokens the others are compared with
    gflop = sum(flops) / 1e9
    _, compile_seconds = generate("static+compile")
    generate("static")
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    same: dict[str, bool] = {}
    for _ in range(args.rounds):
        for name in settings:
            ids, took = generate(name)
            seconds[name].append(took)
            same[name] = bool(torch.equal(ids, reference))
    peak, _ = matmul_peak()
    rows = sorted({len(prompts), *(int(r) for r in args.ceiling_rows.split(",") if r)})
    by_rows = {r: decode_matmul_ceiling(policy.model, r) / peak for r in rows}  # the rows decoded among them
    median = {name: statistics.median(s) for name, s in seconds.items()}
    line = {
        "rows": len(prompts),
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "seconds": median,
        "ratio_to_dynamic": {name: median[name] / median["dynamic"] for name in median},
        "same_tokens_as_dynamic": same,
        "compile_seconds": compile_seconds,
        "generation_peak_fraction": {name: gflop / median[name] / peak for name in median},
        "decode_matmul_ceiling_fraction": by_rows[len(prompts)],
        "ceiling_fraction_by_rows": by_rows,
        "matmul_peak_gflops": peak,
        "machine": machine(),
    }
    for name in settings:
        print(f"{name:>15}: {median[name]:.2f} s (" + ", ".join(f"{s:.2f}" for s in seconds[name]) + ")")
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
