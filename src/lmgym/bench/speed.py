"""Speed of one PPO iteration: seconds per phase, and the update's achieved FLOP/s.

One warm-up iteration, then ``repeats`` timed ones, of the real `PPOTrainer` on the
sentiment task. Every sample generates exactly ``new_tokens`` tokens
(min_new_tokens = max_new_tokens), so the work per iteration is fixed. The PPO
epochs and minibatch size are `PPOConfig`'s defaults unless given.

The fp32 matmul peak is measured in the same process with the same thread count
(`torch.mm` of square float32 matrices); the update's FLOPs are estimated
analytically (see `update_flops`) and divided by the update's measured seconds.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lmgym.algos.ppo import PPOTrainer
from lmgym.config import PPOConfig, load_config
from lmgym.environment import machine
from lmgym.errors import InputError
from lmgym.models.small_products import product
from lmgym.rollout.rollout import Rollout

PHASES = ("generate", "score", "reward", "update")
RESULT_KEYS = (
    "model",
    "batch",
    "new_tokens",
    "threads",
    "seconds_generate",
    "seconds_score",
    "seconds_reward",
    "seconds_update",
    "seconds_total",
    "generated_tokens_per_s",
    "matmul_peak_gflops",
    "update_gflops",
    "update_peak_fraction",
    "machine",
)


# --- FLOP accounting (also used by benchmarks/vs_trl.py) ---------------------------------------------


def _attn_width(model: torch.nn.Module) -> int:
    """num_heads × head_dim: the width of Q, K and V."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_attention_heads", None) or cfg.num_heads
    hidden = getattr(cfg, "hidden_size", None) or cfg.d_model
    return heads * (getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or hidden // heads)


def update_flops(
    model: torch.nn.Module,
    rows: int,
    prompt_len: int,
    gen_len: int,
    is_seq2seq: bool = False,
    head_positions: int | None = None,
    value_head_params: int = 0,
    separate_critic: bool = False,
    skipped_blocks: int = 0,
) -> float:
    """Matmul FLOPs of forward + backward of the update's pass over ``rows`` sequences of prompt_len + gen_len
    tokens, counting what actually runs when only some blocks train (norms, softmax, the optimizer step and the
    embedding lookup are left out).

    A weight applied to T tokens costs 2·T per parameter forward, 2·T for the input gradient and 2·T for its
    own gradient (hence 6·, or 4· for a frozen weight that gradients pass through). Blocks below the lowest
    trainable one run forward only; blocks from it up need input gradients, and weight gradients where they
    train. Attention's Q·Kᵀ and A·V cost 4·S²·width per row and layer forward (the full S × S square: with a
    padding mask the kernels do not skip the causal half) and twice that backward. The LM head is applied at
    ``head_positions`` positions per row (logits_to_keep; default all S), the value head, trained, at gen_len.
    The bottom ``skipped_blocks`` do not run at all when the pass starts from states kept during generation
    (models/trunk.py). A separate critic adds its own fully trained pass and an LM head forward (its logits do
    not enter the loss). A causal pass (`lmgym.models.policy.forward_rows`) stops before the last generated
    token, which nothing scores: its sequence is prompt_len + gen_len − 1 long, with the head at gen_len positions.

    seq2seq (approximate, every block trained: all decoder weights counted on the G decoder tokens):
        6·N_enc·rows·P + 6·N_dec·rows·G + (6 or 4)·N_head·rows·G + 6·N_value·rows·G
        + 12·attn_width·rows·(enc_layers·P² + dec_layers·(G² + G·P))
    """
    from lmgym.models.policy import transformer_blocks

    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    head_cost = 6 if head.requires_grad else 4
    width = _attn_width(model)
    if is_seq2seq:
        P, G = prompt_len, gen_len
        stacks = transformer_blocks(model)
        encoder = sum(p.numel() for p in model.get_encoder().parameters() if p is not embedding)
        decoder = sum(p.numel() for p in model.parameters() if p is not embedding and p is not head) - encoder
        layers = [len(stack) for stack in stacks]
        trunk = 6 * (encoder * rows * P + decoder * rows * G)
        attention = 12 * width * rows * (layers[0] * P * P + layers[-1] * (G * G + G * P))
        total = trunk + attention + head_cost * head.numel() * rows * G + 6 * value_head_params * rows * G
        if separate_critic:
            total += trunk + attention + 2 * head.numel() * rows * G
        return float(total)
    S = prompt_len + gen_len
    K = min(head_positions or S, S)
    return pass_flops(
        model, rows, S, rows * K, value_head_params, rows * gen_len, separate_critic, skipped_blocks=skipped_blocks
    )


def pass_flops(
    model: torch.nn.Module,
    rows: int,
    seq_len: int,
    head_outputs: int,
    value_head_params: int = 0,
    value_outputs: int = 0,
    separate_critic: bool = False,
    skipped_blocks: int = 0,
    attention: bool = True,
) -> float:
    """Matmul FLOPs of forward + backward of one pass of a causal LM over ``rows`` × ``seq_len`` tokens, with the
    LM head at ``head_outputs`` positions in all and the value head (trained) at ``value_outputs`` (the terms of
    `update_flops`; a packed pass, models/packing.py, has its own rows, length and head positions). Without
    ``attention``: the weights' products alone (Q·Kᵀ and A·V left out)."""
    from lmgym.models.policy import transformer_blocks

    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    head_cost = 6 if head.requires_grad else 4
    width = _attn_width(model)
    S = seq_len
    tokens = rows * S
    blocks = [block for stack in transformer_blocks(model) for block in stack]
    trains = [any(p.requires_grad for p in block.parameters()) for block in blocks]
    lowest = 0 if embedding.requires_grad else next((i for i, t in enumerate(trains) if t), len(blocks))
    attention_flops = 4 * S * S * width * rows if attention else 0
    in_blocks = {id(p) for block in blocks for p in block.parameters()} | {id(embedding), id(head)}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)  # final norm etc.
    total = 0.0
    for i, (block, trainable) in enumerate(zip(blocks, trains, strict=True)):
        params = sum(p.numel() for p in block.parameters())
        if i < skipped_blocks:
            continue
        if i < lowest:
            total += 2 * params * tokens + attention_flops
        else:
            total += (6 if trainable else 4) * params * tokens + 3 * attention_flops
    total += (6 if lowest < len(blocks) else 2) * rest * tokens
    total += (head_cost if head.requires_grad or lowest < len(blocks) else 2) * head.numel() * head_outputs
    total += 6 * value_head_params * value_outputs
    if separate_critic:  # every block of the critic trains; its LM head runs forward only
        block_params = sum(p.numel() for block in blocks for p in block.parameters())
        total += 6 * (block_params + rest) * tokens + 3 * attention_flops * len(blocks)
        total += 2 * head.numel() * head_outputs
    return float(total)


@dataclass
class Pass:
    """The shape of one forward pass of a causal LM: what `pass_flops` needs."""

    rows: int
    seq_len: int
    head_outputs: int
    skipped_blocks: int


@contextmanager
def recorded_passes(model: torch.nn.Module) -> Iterator[list[Pass]]:
    """Record the shape of every forward call of ``model`` (a causal LM) while the context is open: rows, length,
    logits kept (``logits_to_keep``: a count per row, or a boolean mask) and the bottom blocks a pass from kept
    trunk states skips (models/trunk.py)."""
    from lmgym.models.policy import transformer_blocks

    depth = sum(len(stack) for stack in transformer_blocks(model))
    passes: list[Pass] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows, length = ids.shape
        keep = kwargs.get("logits_to_keep", 0)
        if isinstance(keep, torch.Tensor):
            head = int(keep.sum()) if keep.dtype == torch.bool else keep.numel() * (rows if keep.dim() == 1 else 1)
        else:
            head = rows * (keep or length)
        skipped = depth - sum(len(stack) for stack in transformer_blocks(model))
        passes.append(Pass(rows, length, head, skipped))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield passes
    finally:
        handle.remove()


@contextmanager
def recorded_forward_flops(model: torch.nn.Module) -> Iterator[list[float]]:
    """Matmul FLOPs of every forward call of a causal LM's blocks and LM head while the context is open, one
    entry per call: 2 per weight per token, and 4·width per query per key for the attention. Made for
    generation, whose calls differ in shape (a prefill of the prompts, then one token per row per decoding step
    against a growing cache): the keys per query are the attention mask's length (causal masking left out)."""
    from lmgym.models.policy import transformer_blocks

    blocks = [block for stack in transformer_blocks(model) for block in stack]
    block_params = sum(p.numel() for block in blocks for p in block.parameters())
    width = _attn_width(model)
    head = model.get_output_embeddings()
    flops: list[float] = []

    def blocks_hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        rows, queries = ids.shape
        mask = kwargs.get("attention_mask")
        keys = mask.shape[-1] if isinstance(mask, torch.Tensor) else queries
        flops.append(2.0 * block_params * rows * queries + 4.0 * width * len(blocks) * rows * queries * keys)

    def head_hook(_module: torch.nn.Module, args: tuple) -> None:
        flops.append(2.0 * head.weight.numel() * args[0].shape[:-1].numel())

    handles = [
        model.get_decoder().register_forward_pre_hook(blocks_hook, with_kwargs=True),
        head.register_forward_pre_hook(head_hook),
    ]
    try:
        yield flops
    finally:
        for handle in handles:
            handle.remove()


def passes_flops(
    model: torch.nn.Module,
    passes: list[Pass],
    value_head_params: int = 0,
    separate_critic: bool = False,
    attention: bool = True,
) -> float:
    """`pass_flops` summed over recorded passes (the value head, if any, at every row of logits)."""
    return sum(
        pass_flops(
            model,
            p.rows,
            p.seq_len,
            p.head_outputs,
            value_head_params,
            p.head_outputs if value_head_params else 0,
            separate_critic,
            p.skipped_blocks,
            attention,
        )
        for p in passes
    )


# --- the instrumented trainer ---------------------------------------------------------------------


class _TimedPPOTrainer(PPOTrainer):
    """`PPOTrainer` that records the shapes each update worked on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_log: list[dict[str, Any]] = []
        self._rows = 0
        self._epochs = 0

    def minibatches(self, n: int, size: int, epoch: int) -> list[torch.Tensor]:
        # Called once per epoch; the benchmark sets no target_kl, so every minibatch returned here is trained on.
        batches = super().minibatches(n, size, epoch)
        self._rows += sum(len(idx) for idx in batches)
        self._epochs += 1
        return batches

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        self._rows, self._epochs = 0, 0
        with recorded_passes(self.policy.model) as passes:
            stats = super().update(rollout, advantages, returns)
        self.update_log.append(
            {
                "batch": int(rollout.batch.prompt_ids.shape[0]),
                "prompt_len": int(rollout.batch.prompt_ids.shape[1]),
                "gen_len": int(rollout.batch.gen_ids.shape[1]),
                "generated_tokens": int(rollout.mask.sum()),
                "rows": self._rows,
                "epochs": self._epochs,
                "optimizer_steps": int(stats["update_steps"]),
                "passes": passes,
            }
        )
        return stats


def _update_flops(trainer: _TimedPPOTrainer, update: dict[str, Any]) -> float:
    """FLOPs of one logged update: its recorded passes (causal LMs), or the shapes it saw (encoder-decoders)."""
    policy = trainer.policy
    value_params = sum(p.numel() for p in policy.value_head.parameters()) if policy.value_head is not None else 0
    separate = policy.critic is not None
    if not policy.is_seq2seq:
        return passes_flops(policy.model, update["passes"], value_params, separate)
    return update_flops(
        policy.model,
        update["rows"],
        update["prompt_len"],
        update["gen_len"],
        is_seq2seq=True,
        value_head_params=value_params,
        separate_critic=separate,
    )


# --- the fp32 matmul peak -------------------------------------------------------------------------


def _best_seconds(run: Callable[[], object], min_reps: int, min_seconds: float) -> tuple[float, float]:
    """Best wall-clock and process-CPU seconds of ``run`` over at least ``min_reps`` calls and ``min_seconds``
    (one untimed warm-up call first)."""
    run()
    best_wall = best_cpu = math.inf
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
        reps += 1
    return best_wall, best_cpu


def matmul_peak(size: int = 2048, min_reps: int = 3, min_seconds: float = 0.5) -> tuple[float, float]:
    """Best-of GFLOP/s of ``torch.mm`` on two square float32 matrices at the current thread count, by the wall
    clock and by the process's CPU clock (the latter holds up when other processes share the cores)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    best_wall, best_cpu = _best_seconds(lambda: torch.mm(a, b, out=out), min_reps, min_seconds)
    flops = 2.0 * size**3
    return flops / best_wall / 1e9, flops / max(best_cpu, 1e-9) / 1e9


def decode_matmul_shapes(model: torch.nn.Module) -> dict[tuple[int, int], int]:
    """How many linear layers of each (in, out) shape one decoding step runs: every ``nn.Linear`` of the
    model (the LM head included), a critic or value head excluded by passing the language model alone."""
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def decode_matmul_ceiling(model: torch.nn.Module, rows: int, min_seconds: float = 0.05) -> float:
    """GFLOP/s of one decoding step's matrix products alone: ``rows`` × in inputs through every linear shape
    of ``model`` (float32, the current thread count, best of repeats), FLOPs summed over the step, each computed
    as generation computes it (`lmgym.models.small_products.product`).

    Decoding multiplies a few rows by each weight, a shape at which a CPU's GEMM reaches only part of the
    square-matrix peak (`matmul_peak`); this is the most a generation phase could reach on this machine at
    this batch size if everything but these products took no time. An upper bound: each shape is repeated
    with its weight in cache, while a decoding step reads every weight from memory once
    (benchmarks/where_time_goes.py times the products that way)."""
    gen = torch.Generator().manual_seed(0)
    flops = seconds = 0.0
    for (n_in, n_out), count in decode_matmul_shapes(model).items():
        x, w = torch.randn(rows, n_in, generator=gen), torch.randn(n_out, n_in, generator=gen)
        best, _ = _best_seconds(lambda x=x, w=w: product(x, w), 3, min_seconds)
        flops += count * 2.0 * rows * n_in * n_out
        seconds += count * best
    if seconds <= 0:
        raise InputError(f"{type(model).__name__} has no linear layers to time")
    return flops / seconds / 1e9


# --- the benchmark --------------------------------------------------------------------------------


def run_speed_benchmark(
    model: str = "smollm2-135m-instruct",
    batch: int = 16,
    new_tokens: int = 24,
    repeats: int = 2,
    console: Console | None = None,
    threads: int | None = None,
    epochs: int | None = None,
    minibatch_size: int | None = None,
    matmul_size: int = 2048,
) -> dict[str, Any]:
    """Time one warm-up and ``repeats`` PPO iterations; print a table and one JSON line; return its dict.

    ``seconds_total`` is the mean wall time of a whole iteration (`trainer.step`),
    the four phases plus a little bookkeeping (KL penalty, GAE, logging);
    ``generated_tokens_per_s`` is generated tokens per second of that whole iteration.
    """
    if batch < 1 or new_tokens < 1 or repeats < 1:
        raise InputError(f"batch, new_tokens and repeats must be >= 1, got {batch}, {new_tokens}, {repeats}")
    console = console or Console()
    defaults = PPOConfig()
    epochs = epochs or defaults.epochs
    minibatch_size = minibatch_size or defaults.minibatch_size
    threads_before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="lmgym-bench-") as run_dir:
            overrides = [
                "task=sentiment",
                f"model.name={model}",
                f"rollout.batch_size={batch}",
                f"generation.max_new_tokens={new_tokens}",
                f"generation.min_new_tokens={new_tokens}",
                f"ppo.epochs={epochs}",
                f"ppo.minibatch_size={minibatch_size}",
                f"iterations={repeats + 1}",
                f"run_dir={run_dir}",
                "name=speed",
                "eval.num_prompts=4",
                "checkpoint.every=0",
            ]
            if threads is not None:
                overrides.append(f"threads={threads}")
            config = load_config(None, overrides)
            quiet = Console(file=io.StringIO(), quiet=True)
            with console.status(f"loading {model}"):
                trainer = _TimedPPOTrainer(config, overwrite=True, console=quiet)
            n_threads = torch.get_num_threads()
            records, walls = [], []
            for iteration in range(1, repeats + 2):
                label = "warm-up iteration" if iteration == 1 else f"timed iteration {iteration - 1}/{repeats}"
                with console.status(f"{model}: {label}"):
                    t0 = time.perf_counter()
                    record = trainer.step(iteration)
                    walls.append(time.perf_counter() - t0)
                records.append(record)
            with console.status(f"fp32 matmul peak ({matmul_size}², {n_threads} threads)"):
                peak, _ = matmul_peak(matmul_size)
            flops = [_update_flops(trainer, u) for u in trainer.update_log]
    finally:
        torch.set_num_threads(threads_before)

    timed, timed_walls, timed_updates, timed_flops = records[1:], walls[1:], trainer.update_log[1:], flops[1:]
    seconds = {p: sum(r[f"time/{p}"] for r in timed) / repeats for p in PHASES}
    seconds_total = sum(timed_walls) / repeats
    tokens = sum(u["generated_tokens"] for u in timed_updates) / repeats
    update_gflops = sum(timed_flops) / sum(r["time/update"] for r in timed) / 1e9

    last = timed_updates[-1]
    table = Table(title=f"one PPO iteration: {model}, threads {n_threads}")
    for col in ("phase", "seconds", "share", "generated tok/s"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    other = max(seconds_total - sum(seconds.values()), 0.0)
    for phase, secs in (*seconds.items(), ("other", other)):
        rate = f"{tokens / secs:,.0f}" if secs > 0 and phase != "other" else "-"
        table.add_row(phase, f"{secs:.3f}", f"{secs / seconds_total:.1%}", rate)
    table.add_row("[bold]iteration", f"[bold]{seconds_total:.3f}", "100.0%", f"[bold]{tokens / seconds_total:,.0f}")
    console.print(
        f"batch {batch} prompts × {new_tokens} new tokens (padded prompt {last['prompt_len']} tokens); "
        f"PPO {epochs} epochs × minibatch {minibatch_size} = {last['optimizer_steps']} optimizer steps; "
        f"mean of {repeats} timed iterations after 1 warm-up",
        highlight=False,
    )
    console.print(table)
    console.print(
        f"fp32 matmul peak ({matmul_size}×{matmul_size} torch.mm): {peak:,.1f} GFLOP/s; "
        f"update ≈ {sum(timed_flops) / repeats / 1e9:,.2f} GFLOP per iteration → {update_gflops:,.1f} GFLOP/s "
        f"= {update_gflops / peak:.1%} of the peak",
        highlight=False,
    )
    result: dict[str, Any] = {
        "model": model,
        "batch": batch,
        "new_tokens": new_tokens,
        "threads": n_threads,
        **{f"seconds_{p}": seconds[p] for p in PHASES},
        "seconds_total": seconds_total,
        "generated_tokens_per_s": tokens / seconds_total,
        "matmul_peak_gflops": peak,
        "update_gflops": update_gflops,
        "update_peak_fraction": update_gflops / peak,
        "machine": machine(),
    }
    print(json.dumps(result))
    return result
