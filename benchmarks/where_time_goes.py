"""Where a full fine-tune's update and a decoding step spend their time on a CPU (issue #19's profile).

The update: lmgym GRPO in the setting of ``vs_trl.py --setting full`` (every weight trainable, 32 completions
of 24 tokens, 2 micro-batches, the guards' rollback copy on), ``--steps`` steps. Its parts are timed by the
wall clock without a profiler: the forward passes (scores and loss), the backward passes, the guards' host copy,
the optimizer step (without the copy it triggers), the gradient clipping, and the rest; medians over the steps
after the third (the heap may still grow before). One more update runs under ``torch.profiler``: the
operators inside its forward and backward passes are split into matrix products, attention and the rest, and
the products' FLOP/s there are set against the fp32 matmul peak measured in the same process.

The decoding step: ``generate_and_score`` as a rollout calls it (shared prefill, W·xᵀ products) at ``rows`` rows
and at 1 row, per generated token; and the products of one decoding step alone, every linear layer once in the
model's order (as a step reads the weights: from memory, not from cache) and, as `decode_matmul_ceiling` times
them, each shape repeated. At 1 row the products are a small part of the step; the rest is the per-step cost
of running the model (Python, dispatch, small operators) that does not grow with the rows. One more generation
at ``rows`` runs under ``torch.profiler``: each operator's share of its time says where the rest goes.

    python benchmarks/where_time_goes.py                         # the bundled model (about 5 minutes)
    python benchmarks/where_time_goes.py --model tiny --steps 4  # checks the script in seconds
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import torch
from decoding import repeated_prompts
from trl_sides import PRESETS, Settings, lmgym_overrides

from lmgym.bench.speed import decode_matmul_ceiling, matmul_peak, passes_flops, recorded_passes
from lmgym.environment import machine
from lmgym.models.small_products import product

PARTS = ("forward", "backward", "guards copy", "optimizer step", "clip")
WARM_STEPS = 3  # steps left out of the medians: the kept heap may still grow in those (lmgym.host_memory)


def operator_kind(name: str) -> str:
    """The group a profiled operator counts in: matrix products, attention, or the rest."""
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
        return "products"
    if "scaled_dot_product" in name:
        return "attention"
    return "other"


@contextmanager
def timed_parts(trainer: Any) -> Iterator[dict[str, float]]:
    """Seconds spent in each of `PARTS` while the context is open (each also a ``torch.profiler`` range named
    ``part:<name>``). The optimizer step's seconds leave out the guards' copy, which its pre-hook makes."""
    from lmgym.algos import guards

    seconds = dict.fromkeys(PARTS, 0.0)

    def wrap(function: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(f"part:{part}"):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    seconds[part] += time.perf_counter() - start

        return timed

    targets = [
        (trainer, "minibatch_loss", "forward"),
        (trainer.dist, "backward", "backward"),
        (guards, "keep_tensors", "guards copy"),
        (trainer.optimizer, "step", "optimizer step"),
        (trainer.dist, "clip_grad_norm", "clip"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    for owner, name, part in targets:
        setattr(owner, name, wrap(getattr(owner, name), part))
    try:
        yield seconds
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
        seconds["optimizer step"] -= seconds["guards copy"]


def profile_split(events: Any) -> dict[str, float]:
    """Self CPU seconds of the profiled operators inside the forward and backward ranges, per `operator_kind`."""
    split = {"products": 0.0, "attention": 0.0, "other": 0.0}
    for event in events:
        parent, inside = event.cpu_parent, False
        while parent is not None and not inside:
            inside = parent.name in ("part:forward", "part:backward")
            parent = parent.cpu_parent
        if inside and not event.name.startswith("part:"):
            split[operator_kind(event.name)] += event.self_cpu_time_total / 1e6
    return split


def profile_update(settings: Settings) -> dict[str, Any]:
    """The update's parts (unprofiled medians) and its profiled operator split (see the module docstring)."""
    from rich.console import Console

    from lmgym.algos import get_trainer
    from lmgym.config import load_config

    with tempfile.TemporaryDirectory(prefix="lmgym-where-") as run_dir:
        config = load_config(None, lmgym_overrides(settings, "grpo", run_dir))
        trainer = get_trainer("grpo")(config, overwrite=True, console=Console(file=io.StringIO()))
        model = trainer.policy.model
        update = trainer.update
        passes: list[Any] = []  # the shapes of the last update's passes
        profiler: torch.profiler.profile | None = None  # the next update runs under it when set

        def recorded_update(*args: Any, **kwargs: Any) -> Any:
            nonlocal passes
            with ExitStack() as stack:
                passes = stack.enter_context(recorded_passes(model))
                if profiler is not None:
                    stack.enter_context(profiler)
                return update(*args, **kwargs)

        trainer.update = recorded_update
        steps: list[dict[str, float]] = []
        for step in range(1, settings.steps + 1):
            with timed_parts(trainer) as parts:
                seconds = trainer.step(step)["time/update"]
            flops = passes_flops(model, passes)
            peak, _ = matmul_peak(settings.matmul_size)  # right after the step: the machine's speed drifts
            rest = seconds - sum(parts.values())  # per step: medians of the parts need not add up to the update's
            steps.append({"update": seconds, **parts, "rest": rest, "peak_fraction": flops / 1e9 / seconds / peak})
        profiler = torch.profiler.profile()
        with timed_parts(trainer):
            trainer.step(settings.steps + 1)
        peak, _ = matmul_peak(settings.matmul_size)
        split = profile_split(profiler.events())
    timed = steps[WARM_STEPS:] or steps[-1:]
    medians = {key: statistics.median(s[key] for s in timed) for key in ("update", *PARTS, "rest", "peak_fraction")}
    profiled = sum(split.values())
    products_gflop = passes_flops(model, passes, attention=False) / 1e9
    return {
        "seconds": medians["update"],
        "parts": {part: medians[part] for part in (*PARTS, "rest")},
        "peak_fraction": medians["peak_fraction"],
        "steps_in_medians": len(timed),
        "profiled_forward_backward_seconds": profiled,
        "profiled_split": {kind: seconds / profiled for kind, seconds in split.items()},
        "products_peak_fraction": products_gflop / split["products"] / peak if split["products"] else float("nan"),
        "matmul_peak_gflops": peak,
    }


def operator_shares(averages: Any, top: int) -> dict[str, float]:
    """Each operator's share of the profiled self CPU time (``averages``: ``profiler.key_averages()``, one entry
    per operator), the ``top`` largest first, then the others together as ``"the rest"``."""
    ranked = sorted(averages, key=lambda op: op.self_cpu_time_total, reverse=True)
    whole = sum(op.self_cpu_time_total for op in ranked) or 1.0
    shares = {op.key: op.self_cpu_time_total / whole for op in ranked[:top]}
    return shares | {"the rest": sum(op.self_cpu_time_total for op in ranked[top:]) / whole}


def decoding_parts(model_name: str, rows: int, k: int, new_tokens: int, rounds: int) -> dict[str, Any]:
    """Seconds per generated token at ``rows`` and at 1 row, and one decoding step's products alone."""
    from lmgym.models.loading import load_model
    from lmgym.models.policy import Policy, make_generation_config

    loaded = load_model(model_name)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
    tok = loaded.tokenizer
    config = make_generation_config(
        tok, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0
    )
    linears = [m for m in policy.model.modules() if isinstance(m, torch.nn.Linear)]
    out: dict[str, Any] = {"rows": rows, "new_tokens": new_tokens}
    for n in (rows, 1):
        enc = tok(repeated_prompts(max(n // k, 1), min(k, n)), return_tensors="pt", padding=True)
        inputs = [torch.randn(n, m.in_features) for m in linears]

        def generate(enc: Any = enc) -> None:
            policy.generate_and_score(enc.input_ids, enc.attention_mask, config)

        def products(inputs: list[torch.Tensor] = inputs) -> None:
            for m, x in zip(linears, inputs, strict=True):
                product(x, m.weight, m.bias)

        generate()
        products()
        step, sweep = [], []
        for _ in range(rounds):  # taking turns
            for run, into in ((generate, step), (products, sweep)):
                start = time.perf_counter()
                run()
                into.append(time.perf_counter() - start)
        out[f"per_token_seconds_{n}"] = statistics.median(step) / new_tokens
        out[f"products_seconds_{n}"] = statistics.median(sweep)
        if n == rows:  # one more generation under the profiler: which operators take the rest
            with torch.profiler.profile() as profiler:
                generate()
            out["profiled_operator_shares"] = operator_shares(profiler.key_averages(), top=8)
    peak, _ = matmul_peak()
    flops = sum(2.0 * rows * m.weight.numel() for m in linears)
    out["products_peak_fraction_in_model_order"] = flops / out[f"products_seconds_{rows}"] / 1e9 / peak
    out["products_peak_fraction_each_shape_repeated"] = decode_matmul_ceiling(policy.model, rows) / peak
    out["matmul_peak_gflops"] = peak
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=Settings.model)
    parser.add_argument("--steps", type=int, default=6, help="timed update steps (the first three are left out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="timed generations per row count, taking turns")
    parser.add_argument("--completions", type=int, default=Settings.completions)
    parser.add_argument("--micro-batch", type=int, default=Settings.micro_batch)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = replace(
        Settings(),
        **PRESETS["full"],
        model=args.model,
        steps=args.steps,
        threads=args.threads,
        completions=args.completions,
        micro_batch=args.micro_batch,
    )
    update = profile_update(settings)
    decoding = decoding_parts(args.model, settings.completions, settings.k, settings.new_tokens, args.rounds)
    line = {"model": args.model, "threads": args.threads, "update": update, "decoding": decoding, "machine": machine()}
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in update["parts"].items())
    print(f"update: {update['seconds']:.2f} s ({parts}); {update['peak_fraction']:.0%} of the matmul peak")
    split = ", ".join(f"{kind} {share:.0%}" for kind, share in update["profiled_split"].items())
    print(f"  profiled forward + backward: {split}; the products at {update['products_peak_fraction']:.0%} of the peak")
    ms = {key: value * 1e3 for key, value in decoding.items() if "seconds" in key}
    rows = decoding["rows"]
    print(
        f"decoding, per generated token: {ms[f'per_token_seconds_{rows}']:.0f} ms at {rows} rows (their products "
        f"alone {ms[f'products_seconds_{rows}']:.0f} ms), {ms['per_token_seconds_1']:.0f} ms at 1 row (products "
        f"{ms['products_seconds_1']:.0f} ms)"
    )
    shares = ", ".join(f"{name} {share:.0%}" for name, share in decoding["profiled_operator_shares"].items())
    print(f"  profiled generation at {rows} rows, share of operator time: {shares}")
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
