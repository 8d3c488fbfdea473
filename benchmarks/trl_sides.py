"""lmgym against TRL's GRPOTrainer, side by side: the same model, prompts, batch, reward and learning rate.

Three sides, each in its own subprocess (so that their memory peaks do not mix), loaded at once and then
taking turns step by step (only one computes at a time, so a change in the machine's load falls on all):

- ``trl-grpo``: ``trl.GRPOTrainer`` on the model (a copy is loaded as its reference, beta > 0);
- ``lmgym-grpo``: lmgym's GRPO, the same objective (clipped ratio, k3 KL to the reference in the loss,
  group-normalised rewards, token-level mean), on the same prompts in the same order;
- ``lmgym-ppo``: lmgym's PPO with a value head on the shared trunk and the KL in the reward; by default
  ``ppo_k`` = ``k`` completions per prompt (``ppo.k``), so that it trains on the GRPO sides' prompts (each
  completion with its own returns and GAE); ``--ppo-k 1`` draws one completion each of ``completions`` prompts.

Every side runs ``steps`` training steps. A step is generate + score + reward + update: ``completions``
completions (``k`` per prompt; ``ppo_k`` for PPO) of exactly ``new_tokens`` tokens each (min = max new tokens),
then one optimizer step over all of them in micro-batches of ``micro_batch`` (gradients accumulated), so
the samples, tokens, forward/backward passes and optimizer steps per step are equal. The same blocks are
trainable on all sides (``trainable_layers``, embeddings frozen or not). From the steps' wall times and
rewards come the ratios:

- step ratios: median wall seconds per step (the first, warm-up step left out), lmgym / TRL; the same
  ratios of process CPU seconds are reported beside them (with one thread, the cost of a step whatever
  else runs on the machine);
- time to reward: wall clock from the first step until the mean reward of the last 5 steps first reaches
  ``reward_target``; where a side never gets there, the best such mean that TRL and lmgym's best side both
  reach stands in (and is stated);
- update peak fraction: the update's matmul FLOPs (estimated analytically: what actually runs, frozen
  blocks forward only, blocks skipped by the kept trunk states not at all) per CPU second of the update
  phase, over the fp32 ``torch.mm`` peak per CPU second measured in the same process right after that
  step (untimed; this machine's speed drifts by up to 2× within a run), the median over the timed steps
  as for the step ratios (the wall-clock version is reported beside it); the lower of lmgym's two sides;
- score forwards: forward passes of each model (policy, reference, critic) in the score phase, per batch;
- memory: the peak RSS of the training steps (the kernel's high-water mark, reset once the models are
  loaded) of lmgym's PPO over TRL's GRPO.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from statistics import median
from typing import Any

import torch
from memory import current_rss_mib, peak_rss_mib, reset_peak_rss

SIDES = ("trl-grpo", "lmgym-grpo", "lmgym-ppo")
RESULT_KEYS = ("grpo_step_ratio", "ppo_step_ratio", "time_to_reward_ratio", "update_peak_fraction", "memory_ratio")
REWARD_WINDOW = 5  # steps in the moving mean that time-to-reward watches


class Gate:
    """Turn-taking with the other sides: the comparison runs all sides at once but lets only one compute at a
    time, step by step, so that a change in the machine's load falls on every side alike. A side waits for
    its turn (one byte on ``go``: GO to run, STOP to end its training early) and hands it back (one byte on
    ``done``); without pipes it runs freely."""

    GO, STOP = b".", b"s"

    def __init__(self, fds: str | None = None) -> None:
        self.go, self.done = (int(fd) for fd in fds.split(",")) if fds else (None, None)

    def wait(self) -> bool:
        """Block until this side's turn; False when it is told to stop training instead."""
        if self.go is None:
            return True
        byte = os.read(self.go, 1)
        if not byte:
            raise SystemExit("the comparison that started this side is gone")
        return byte == self.GO

    def release(self) -> None:
        if self.done is not None:
            os.write(self.done, b".")


@dataclass(frozen=True)
class Settings:
    """What both libraries are given; every field is set identically on every side."""

    model: str = "smollm2-135m-instruct"  # lmgym name (bundled alias, folder or 'tiny'); TRL loads the same weights
    steps: int = 30  # training steps per side
    completions: int = 32  # completions generated and trained on per step
    k: int = 4  # completions per prompt (the GRPO group; TRL's num_generations)
    ppo_k: int = 4  # lmgym PPO's completions per prompt (ppo.k); = k: the same prompts as the GRPO sides
    micro_batch: int = 16  # completions per forward/backward; completions / micro_batch are accumulated
    new_tokens: int = 24  # every completion has exactly this many tokens (min_new_tokens = max_new_tokens)
    lr: float = 2e-4  # AdamW learning rate, constant (the demo's, for its top-8-blocks setting)
    beta: float = 0.04  # GRPO: weight of the k3 KL to the reference in the loss (TRL then loads a reference)
    clip_range: float = 0.2  # ε of the clipped ratio (TRL's epsilon)
    max_grad_norm: float = 1.0
    trainable_layers: int | None = 8  # train the top N transformer blocks (None: all), as configs/demo.yaml
    freeze_embeddings: bool = True  # input embeddings / LM head frozen, as configs/demo.yaml
    max_prompt_tokens: int = 64
    threads: int = 2  # torch CPU threads on every side
    seed: int = 0
    reward_target: float = 0.5  # time to reward: the moving mean reward to reach
    matmul_size: int = 2048  # side of the square matrices of the fp32 peak measurement
    rollback: bool = True  # lmgym's guards.rollback (its default): a host copy of the trainable state
    host_memory: str = "auto"  # lmgym's accelerate.host_memory (auto: keep freed memory on a CPU; release)

    def __post_init__(self) -> None:
        if self.completions % self.k:
            raise ValueError(f"completions ({self.completions}) must be a multiple of k ({self.k})")
        if self.completions % self.micro_batch:
            raise ValueError(f"completions ({self.completions}) must be a multiple of micro_batch ({self.micro_batch})")
        if self.completions % self.ppo_k:
            raise ValueError(f"completions ({self.completions}) must be a multiple of ppo_k ({self.ppo_k})")
        if self.k < 2:
            raise ValueError(f"k must be at least 2 (GRPO's group), got {self.k}")
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2 (the first is a warm-up), got {self.steps}")

    @property
    def accumulation(self) -> int:
        return self.completions // self.micro_batch

    def cli_args(self) -> list[str]:
        """These settings as command-line flags of ``python benchmarks/trl_sides.py``."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + flag[2:])
            else:
                out += [flag, "none" if value is None else str(value)]
        return out


# --- the prompts: lmgym's own schedule, handed to TRL in the same order -------------------------------------


def prompt_schedule(settings: Settings, k: int) -> list[list[str]]:
    """The prompts of each step, as lmgym's on-policy loop draws them (``completions / k`` per step)."""
    from lmgym.algos.trainer import prompt_indices
    from lmgym.data.registry import load_task

    train = load_task("sentiment").split("train")
    per_step = settings.completions // k
    return [
        [train[i].prompt for i in prompt_indices(len(train), per_step, step, settings.seed)]
        for step in range(1, settings.steps + 1)
    ]


# --- FLOPs of the update with frozen blocks -------------------------------------------------------------------


# --- the lmgym sides ------------------------------------------------------------------------------------------


def lmgym_overrides(settings: Settings, algo: str, run_dir: str) -> list[str]:
    s = settings
    out = [
        "task=sentiment",
        f"model.name={s.model}",
        f"model.max_prompt_tokens={s.max_prompt_tokens}",
        f"model.freeze_embeddings={str(s.freeze_embeddings).lower()}",
        f"model.trainable_layers={'null' if s.trainable_layers is None else s.trainable_layers}",
        f"algo={algo}",
        f"iterations={s.steps}",
        f"seed={s.seed}",
        f"threads={s.threads}",
        f"rollout.batch_size={s.completions}",
        f"generation.max_new_tokens={s.new_tokens}",
        f"generation.min_new_tokens={s.new_tokens}",
        "generation.temperature=1.0",
        "generation.top_k=0",
        "generation.top_p=1.0",
        f"{algo}.lr={s.lr}",
        f"{algo}.max_grad_norm={s.max_grad_norm}",
        f"{algo}.clip_range={s.clip_range}",
        f"{algo}.epochs=1",
        f"{algo}.minibatch_size={s.completions}",  # one optimizer step per rollout, as TRL's on-policy step
        f"accelerate.grad_accumulation_steps={s.accumulation}",
        f"run_dir={run_dir}",
        f"name=vs-trl-{algo}",
        "eval.num_prompts=4",
        "checkpoint.every=0",
        f"guards.rollback={str(s.rollback).lower()}",
        f"accelerate.host_memory={s.host_memory}",
    ]
    if algo == "grpo":
        out += [f"grpo.k={s.k}", f"grpo.beta={s.beta}", "grpo.scale_rewards=true"]
    else:  # the demo's PPO: value head on the shared trunk, adaptive KL in the reward
        out += [
            f"ppo.k={s.ppo_k}",
            "model.value_head=shared",
            "kl.controller=adaptive",
            "kl.coef=0.05",
            "kl.target=4.0",
            "kl.horizon=512",
        ]
    return out


class _ForwardCounter:
    """Counts forward calls of named modules outside ``generate`` while ``active``."""

    def __init__(self, modules: dict[str, torch.nn.Module], generating: list[bool]) -> None:
        self.counts = dict.fromkeys(modules, 0)
        self.active = False
        self._generating = generating
        for name, module in modules.items():
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_module, _args):
            if self.active and not self._generating[0]:
                self.counts[name] += 1

        return hook


def _instrumented(trainer_cls: type) -> type:
    """``trainer_cls`` recording, per step, the update's shapes (for the FLOP estimate) and the forward passes
    of each model in the rollout outside generation (the score phase)."""
    from lmgym.bench.speed import recorded_forward_flops, recorded_passes

    class Instrumented(trainer_cls):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.update_log: list[dict[str, int]] = []
            self.score_forwards: list[dict[str, int]] = []
            self._rows = 0
            generating = [False]
            model = self.policy.model
            generate = model.generate

            def flagged_generate(*a: Any, **kw: Any) -> Any:
                generating[0] = True
                try:
                    return generate(*a, **kw)
                finally:
                    generating[0] = False

            model.generate = flagged_generate
            self.generation_flops: list[float] = []
            generate_and_score = self.policy.generate_and_score

            def counted_generate_and_score(*a: Any, **kw: Any) -> Any:
                with recorded_forward_flops(model) as calls:  # the prefill and every decoding step
                    out = generate_and_score(*a, **kw)
                self.generation_flops[-1] += sum(calls)
                return out

            self.policy.generate_and_score = counted_generate_and_score
            modules = {"policy": model, "reference": self.reference.lm}
            if self.policy.critic is not None:
                modules["critic"] = self.policy.critic
            self._counter = _ForwardCounter(modules, generating)

        def rollout(self, samples):
            self.generation_flops.append(0.0)  # this step's
            self._counter.counts = dict.fromkeys(self._counter.counts, 0)
            self._counter.active = True
            try:
                out = super().rollout(samples)
            finally:
                self._counter.active = False
            self.score_forwards.append(dict(self._counter.counts))
            return out

        def minibatches(self, n: int, size: int, epoch: int) -> list[torch.Tensor]:
            batches = super().minibatches(n, size, epoch)
            self._rows += sum(len(idx) for idx in batches)
            return batches

        def update(self, rollout, advantages, returns):
            self._rows = 0
            cpu0 = time.process_time()
            with recorded_passes(self.policy.model) as passes:  # the shapes that ran (packed, trimmed, from trunk)
                stats = super().update(rollout, advantages, returns)
            cpu_seconds = time.process_time() - cpu0
            self.update_log.append({"rows": self._rows, "passes": passes, "cpu_seconds": cpu_seconds})
            return stats

    Instrumented.__name__ = f"Instrumented{trainer_cls.__name__}"
    return Instrumented


def run_lmgym_side(settings: Settings, algo: str, gate: Gate | None = None) -> dict[str, Any]:
    """Train ``steps`` steps of lmgym's ``algo``; per-step seconds, phases and rewards, update FLOPs, peaks."""
    gate = gate or Gate()
    import io

    from rich.console import Console

    from lmgym.algos import get_trainer
    from lmgym.bench.speed import decode_matmul_ceiling, matmul_peak, passes_flops
    from lmgym.config import load_config

    with tempfile.TemporaryDirectory(prefix="lmgym-vs-trl-") as run_dir:
        config = load_config(None, lmgym_overrides(settings, algo, run_dir))
        load_start = time.perf_counter()
        trainer = _instrumented(get_trainer(algo))(config, overwrite=True, console=Console(file=io.StringIO()))
        load_seconds = time.perf_counter() - load_start
        rss_loaded = current_rss_mib()
        reset_peak_rss()
        gate.release()  # loaded
        steps: list[dict[str, Any]] = []
        for step in range(1, settings.steps + 1):
            if not gate.wait():
                break
            t0, cpu0 = time.perf_counter(), time.process_time()
            record = trainer.step(step)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
            # The peak right after this step's update (untimed): the machine's speed drifts within a run.
            step_peak, step_peak_cpu = matmul_peak(settings.matmul_size)
            gate.release()
            steps.append(
                {
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "reward": record["reward/task"],
                    "kl": record["kl"],
                    **{f"seconds_{p}": record[f"time/{p}"] for p in ("generate", "score", "reward", "update")},
                    "matmul_peak_gflops": step_peak,
                    "matmul_peak_cpu_gflops": step_peak_cpu,
                }
            )
        peak_rss = peak_rss_mib()
        gate.wait()
        peak, peak_cpu = matmul_peak(settings.matmul_size)
        # Generation's own roofline: one decoding step's products at the rows it decodes.
        decode_ceiling = decode_matmul_ceiling(trainer.policy.model, settings.completions)
        gate.release()
        model = trainer.policy.model
        head = trainer.policy.value_head
        value_params = sum(p.numel() for p in head.parameters()) if head is not None else 0
        flops = [passes_flops(model, u["passes"], value_params) for u in trainer.update_log]
        trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
        return {
            "side": f"lmgym-{algo}",
            "threads": torch.get_num_threads(),
            "load_seconds": load_seconds,
            "steps": steps,
            "update_flops": flops,
            "update_cpu_seconds": [u["cpu_seconds"] for u in trainer.update_log],
            "generation_flops": trainer.generation_flops,
            "matmul_peak_cpu_gflops": peak_cpu,
            "score_forwards": trainer.score_forwards,
            "matmul_peak_gflops": peak,
            "decode_matmul_ceiling_gflops": decode_ceiling,
            "rss_loaded_mib": rss_loaded,
            "peak_rss_mib": peak_rss,
            "trainable_params": trainable,
            "rollback_snapshots": config.guards.rollback,
        }


# --- the TRL side ---------------------------------------------------------------------------------------------


def trl_grpo_config_kwargs(settings: Settings, output_dir: str) -> dict[str, Any]:
    """GRPOConfig arguments equal to lmgym's settings (fp32 on the CPU, constant lr, one generation and one
    optimizer step per step: no separate old-log-prob pass, as in lmgym)."""
    s = settings
    return {
        "output_dir": output_dir,
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "seed": s.seed,
        "max_steps": s.steps,
        "learning_rate": s.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": s.max_grad_norm,
        "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": s.accumulation,
        "num_generations": s.k,
        "num_iterations": 1,
        "max_completion_length": s.new_tokens,
        "generation_kwargs": {"min_new_tokens": s.new_tokens},
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "beta": s.beta,
        "epsilon": s.clip_range,
        "scale_rewards": "group",
        "loss_type": "dapo",  # token-level mean over the batch's completion tokens, as lmgym's masked mean
        # Activation checkpointing (TRL's default) trades ~30% more compute for memory; lmgym runs without it,
        # so TRL does too: the comparison is of speed at equal work.
        "gradient_checkpointing": False,
        "disable_dropout": True,  # lmgym keeps the policy in eval mode
        "shuffle_dataset": False,  # the prompts come in lmgym's order
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "log_completions": False,
    }


def _trl_model_path(name: str, tmp: str) -> str:
    """A folder the TRL side loads the policy from (and, by config name, its reference)."""
    from lmgym.models.loading import load_model, resolve_model_path

    if name in ("tiny", "tiny-seq2seq"):
        loaded = load_model(name)
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        return tmp
    return resolve_model_path(name)


def run_trl_side(settings: Settings, gate: Gate | None = None) -> dict[str, Any]:
    import datasets
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback

    from lmgym.bench.speed import matmul_peak
    from lmgym.data.registry import load_task
    from lmgym.models.loading import load_tokenizer
    from lmgym.models.policy import freeze

    torch.set_num_threads(settings.threads)
    transformers.logging.set_verbosity_error()
    reward = load_task("sentiment").reward

    def vader_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        """lmgym's sentiment reward (VADER compound of the continuation) in TRL's reward_funcs signature."""
        n = len(prompts)
        return [float(x) for x in reward(prompts, completions, [[] for _ in range(n)], [{} for _ in range(n)])]

    prompts = [p for step in prompt_schedule(settings, settings.k) for p in step]
    dataset = datasets.Dataset.from_dict({"prompt": prompts})

    gate = gate or Gate()

    class Clock(TrainerCallback):
        """A step runs from its turn (given at the end of the step before, so TRL's logging between steps
        counts) to on_step_end (after the optimizer step); generation happens inside, in TRL's training_step."""

        def __init__(self) -> None:
            self.starts: list[tuple[float, float]] = []  # (wall, process CPU) clocks
            self.ends: list[tuple[float, float]] = []
            self.rewards: list[float] = []

        def next_turn(self, control) -> None:
            if gate.wait():
                self.starts.append((time.perf_counter(), time.process_time()))
            else:
                control.should_training_stop = True  # TRL still logs the step that just ended

        def on_train_begin(self, args, state, control, **kwargs):
            reset_peak_rss()
            gate.release()  # loaded
            self.next_turn(control)

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), time.process_time()))
            gate.release()
            if state.global_step < state.max_steps:
                self.next_turn(control)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))

    with tempfile.TemporaryDirectory(prefix="lmgym-vs-trl-") as tmp:
        load_start = time.perf_counter()
        path = _trl_model_path(settings.model, os.path.join(tmp, "model"))
        tokenizer = load_tokenizer(path if settings.model in ("tiny", "tiny-seq2seq") else settings.model)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        freeze(model, settings.freeze_embeddings, settings.trainable_layers)
        config = trl.GRPOConfig(**trl_grpo_config_kwargs(settings, os.path.join(tmp, "out")))
        clock = Clock()
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=vader_reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        load_seconds = time.perf_counter() - load_start
        rss_loaded = current_rss_mib()
        trainer.train()
        peak_rss = peak_rss_mib()
        gate.wait()
        peak, peak_cpu = matmul_peak(settings.matmul_size)
        gate.release()
        if not (len(clock.rewards) == len(clock.ends) == len(clock.starts[: len(clock.ends)])):
            raise RuntimeError(f"TRL ran {len(clock.ends)} steps but logged {len(clock.rewards)} rewards")
        steps = [
            {"seconds": end[0] - start[0], "cpu_seconds": end[1] - start[1], "reward": r}
            for start, end, r in zip(clock.starts[: len(clock.ends)], clock.ends, clock.rewards, strict=True)
        ]
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        return {
            "side": "trl-grpo",
            "threads": torch.get_num_threads(),
            "load_seconds": load_seconds,
            "steps": steps,
            "matmul_peak_gflops": peak,
            "matmul_peak_cpu_gflops": peak_cpu,
            "rss_loaded_mib": rss_loaded,
            "peak_rss_mib": peak_rss,
            "trainable_params": trainable,
            "has_reference": trainer.ref_model is not None,
            "trl_version": trl.__version__,
            "transformers_version": transformers.__version__,
        }


def run_side(settings: Settings, side: str, gate: Gate | None = None) -> dict[str, Any]:
    if side == "trl-grpo":
        return run_trl_side(settings, gate)
    if side in ("lmgym-grpo", "lmgym-ppo"):
        return run_lmgym_side(settings, side.removeprefix("lmgym-"), gate)
    raise ValueError(f"unknown side {side!r}; choose from {', '.join(SIDES)}")


# --- the comparison -------------------------------------------------------------------------------------------


def side_command(settings: Settings, side: str, out: str | None = None) -> list[str]:
    """The command line that runs one side on its own (the comparison adds --gate to take turns)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, *settings.cli_args()]
    return [*cmd, "--out", out] if out else cmd


def run_sides_interleaved(
    settings: Settings,
    log_dir: Path,
    sides: tuple[str, ...] = SIDES,
    on_step: Any = None,
    max_seconds: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Start every side in its own subprocess, let them load, then give them turns: step 1 of each side,
    step 2 of each, ... (the order rotating), and last each one's matmul peak measurement, the next side's
    only once the one before has exited. Only one side computes at any time; ``on_step(step)`` is called after
    each round. With ``max_seconds``, no round starts after that many seconds of steps: every side then stops
    with the same number of steps."""
    procs: dict[str, tuple[subprocess.Popen, int, int, Path]] = {}
    try:
        for side in sides:
            go_read, go_write = os.pipe()
            done_read, done_write = os.pipe()
            out = log_dir / f"{side}.json"
            out.unlink(missing_ok=True)
            cmd = [*side_command(settings, side, str(out)), "--gate", f"{go_read},{done_write}"]
            log = (log_dir / f"{side}.log").open("w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, pass_fds=(go_read, done_write))
            log.close()
            os.close(go_read)
            os.close(done_write)
            procs[side] = (proc, go_write, done_read, out)

        def wait_done(side: str) -> None:
            proc, _, done_read, _ = procs[side]
            if not os.read(done_read, 1):  # the side exited instead of handing back its turn
                proc.wait()
                tail = "\n".join((log_dir / f"{side}.log").read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"side {side} failed (exit {proc.returncode}): {shlex.join(proc.args)}\n{tail}")

        def turn(side: str) -> None:
            os.write(procs[side][1], Gate.GO)
            wait_done(side)

        for side in sides:  # loaded
            wait_done(side)
        start = time.perf_counter()
        for step in range(settings.steps):
            if max_seconds is not None and step > 0 and time.perf_counter() - start >= max_seconds:
                for side in sides:
                    os.write(procs[side][1], Gate.STOP)
                break
            for j in range(len(sides)):
                turn(sides[(step + j) % len(sides)])
            if on_step is not None:
                on_step(step + 1)
        for side in sides:  # the matmul peak, one side at a time
            turn(side)
            # Then the side writes its result and exits; the kernel freeing its gigabytes would slow the next
            # side's measurement (it did: end-of-run peaks 40-50% below the steps' own).
            procs[side][0].wait()
        results = {}
        for side, (proc, _, _, out) in procs.items():
            if proc.wait() != 0:
                raise RuntimeError(f"side {side} failed (exit {proc.returncode}); see {log_dir / (side + '.log')}")
            results[side] = json.loads(out.read_text())
        return results
    finally:
        for proc, go_write, done_read, _ in procs.values():
            for fd in (go_write, done_read):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def moving_means(rewards: list[float], window: int = REWARD_WINDOW) -> list[float | None]:
    """Mean of the last ``window`` rewards at each step (None until ``window`` steps have run)."""
    return [None if i + 1 < window else sum(rewards[i + 1 - window : i + 1]) / window for i in range(len(rewards))]


def time_to_level(steps: list[dict[str, Any]], level: float) -> float | None:
    """Seconds from the first step's start until the moving mean reward first reaches ``level``."""
    elapsed = 0.0
    for step, mean in zip(steps, moving_means([s["reward"] for s in steps]), strict=True):
        elapsed += step["seconds"]
        if mean is not None and mean >= level:
            return elapsed
    return None


def best_level(steps: list[dict[str, Any]]) -> float:
    means = [m for m in moving_means([s["reward"] for s in steps]) if m is not None]
    return max(means) if means else -math.inf


def compare(results: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The five ratios (and what they are made of) from the sides' results."""
    trl, grpo, ppo = results["trl-grpo"], results["lmgym-grpo"], results["lmgym-ppo"]

    def step_seconds(r: dict[str, Any]) -> float:
        return median(s["seconds"] for s in r["steps"][1:])

    # Time to reward: the target, or else the best moving mean that TRL and lmgym's best side both reach.
    ours = {"lmgym-grpo": grpo, "lmgym-ppo": ppo}
    level, stated = settings.reward_target, "target"
    lmgym_reaches = any(time_to_level(r["steps"], level) is not None for r in ours.values())
    if time_to_level(trl["steps"], level) is None or not lmgym_reaches:
        level = min(best_level(trl["steps"]), max(best_level(r["steps"]) for r in ours.values()))
        stated = "best level both reach"
    reached = {name: time_to_level(r["steps"], level) for name, r in ours.items()}
    reached = {name: t for name, t in reached.items() if t is not None}
    best_side = min(reached, key=reached.get) if reached else None
    trl_time = time_to_level(trl["steps"], level)
    ttr_ratio = reached[best_side] / trl_time if best_side and trl_time else float("nan")

    def per_step_fraction(r: dict[str, Any], flops: list[float], seconds: list[float], peak_key: str) -> float:
        """Median over the timed steps of each step's FLOP/s over the peak measured right after that step."""
        return median(
            f / t / 1e9 / step[peak_key] for f, t, step in zip(flops[1:], seconds[1:], r["steps"][1:], strict=True)
        )

    def peak_fraction(r: dict[str, Any], clock: str) -> float:
        if clock == "cpu":  # process CPU time: what the work costs, whatever else runs on the machine
            return per_step_fraction(r, r["update_flops"], r["update_cpu_seconds"], "matmul_peak_cpu_gflops")
        update_seconds = [s["seconds_update"] for s in r["steps"]]
        return per_step_fraction(r, r["update_flops"], update_seconds, "matmul_peak_gflops")

    fractions = {name: peak_fraction(r, "cpu") for name, r in ours.items()}
    # Generation by the wall clock (its CPU time is not measured apart from the step's).
    generation = {
        name: per_step_fraction(
            r, r["generation_flops"], [s["seconds_generate"] for s in r["steps"]], "matmul_peak_gflops"
        )
        for name, r in ours.items()
    }
    # What generation could reach if all but the decoding step's products were free (their FLOP/s at the
    # rows decoded, over the square-matrix peak), and how much of that it reaches.
    ceiling = {
        name: r["decode_matmul_ceiling_gflops"] / r["matmul_peak_gflops"]
        for name, r in ours.items()
        if "decode_matmul_ceiling_gflops" in r
    }
    forwards = {
        name: max(max(c.values()) for c in r["score_forwards"]) for name, r in ours.items()
    }  # the most forward passes any one model made in one score phase

    def step_cpu_seconds(r: dict[str, Any]) -> float:
        return median(s["cpu_seconds"] for s in r["steps"][1:])

    return {
        "grpo_step_ratio": step_seconds(grpo) / step_seconds(trl),
        "ppo_step_ratio": step_seconds(ppo) / step_seconds(trl),
        "time_to_reward_ratio": ttr_ratio,
        # The lower of lmgym's two update phases (PPO's also trains the value head).
        "update_peak_fraction": min(fractions.values()),
        "memory_ratio": ppo["peak_rss_mib"] / trl["peak_rss_mib"],
        "details": {
            "seconds_per_step": {name: step_seconds(r) for name, r in results.items()},
            # Process CPU seconds: with one thread, what the step costs whatever else runs on the machine.
            "cpu_seconds_per_step": {name: step_cpu_seconds(r) for name, r in results.items()},
            "cpu_step_ratios": {
                "grpo": step_cpu_seconds(grpo) / step_cpu_seconds(trl),
                "ppo": step_cpu_seconds(ppo) / step_cpu_seconds(trl),
            },
            "time_to_reward": {
                "level": level,
                "level_is": stated,
                "window": REWARD_WINDOW,
                "best_lmgym_side": best_side,
                "seconds": {"trl-grpo": trl_time, **reached},
                "best_moving_mean": {name: best_level(r["steps"]) for name, r in results.items()},
            },
            "update_peak_fraction": fractions,
            "update_peak_fraction_wall_clock": {name: peak_fraction(r, "wall") for name, r in ours.items()},
            "generation_peak_fraction_wall_clock": generation,
            "decode_matmul_ceiling_fraction": ceiling,
            "generation_fraction_of_ceiling": {name: generation[name] / c for name, c in ceiling.items()},
            "matmul_peak_gflops": {name: r["matmul_peak_gflops"] for name, r in results.items()},
            "matmul_peak_cpu_gflops": {name: r["matmul_peak_cpu_gflops"] for name, r in results.items()},
            "step_matmul_peak_cpu_gflops": {  # measured right after each timed step of lmgym's sides
                name: [s["matmul_peak_cpu_gflops"] for s in r["steps"][1:]] for name, r in ours.items()
            },
            "score_forwards_per_model_max": forwards,
            "peak_rss_mib": {name: r["peak_rss_mib"] for name, r in results.items()},
        },
    }


def phase_profile(result: dict[str, Any]) -> dict[str, float]:
    """Median seconds per phase of an lmgym side's timed steps."""
    timed = result["steps"][1:]
    return {p: median(s[f"seconds_{p}"] for s in timed) for p in ("generate", "score", "reward", "update")}


PRESETS = {  # --setting: the fields each preset sets
    "top8": {"trainable_layers": 8, "freeze_embeddings": True, "lr": 2e-4},
    "full": {"trainable_layers": None, "freeze_embeddings": False, "lr": 2e-5},
}


def setting_name(settings: Settings) -> str:
    """The preset ``settings`` match in what is trainable (top8, full), or "custom"."""
    for name, fields_ in PRESETS.items():
        if all(getattr(settings, k) == v for k, v in fields_.items() if k != "lr"):
            return name
    return "custom"


def settings_from_argv(argv: list[str] | None = None) -> tuple[Settings, Any]:
    import argparse

    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setting",
        choices=sorted(PRESETS),
        help="a preset of the fields below (given flags still win): top8 = the demo's (top 8 blocks, embeddings "
        "frozen, lr 2e-4), full = a full fine-tune (every weight trainable, lr 2e-5)",
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "trainable_layers":
            parser.add_argument(flag, type=lambda v: None if v.lower() == "none" else int(v), default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--side", choices=SIDES, help="run one side only (what the comparison runs per subprocess)")
    parser.add_argument("--out", help="--side: write its result as JSON here; comparison: a folder for logs/results")
    parser.add_argument(
        "--max-seconds", type=float, help="comparison: start no round of steps after this many seconds of them"
    )
    parser.add_argument("--gate", help=argparse.SUPPRESS)  # "go,done" pipe fds: take turns with the other sides
    preset, _ = parser.parse_known_args(argv)
    if preset.setting:
        parser.set_defaults(**PRESETS[preset.setting])
    args = parser.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    return settings, args


def _child_main(argv: list[str] | None = None) -> None:
    settings, args = settings_from_argv(argv)
    if args.side is None:
        raise SystemExit("benchmarks/trl_sides.py runs one side: give --side (benchmarks/vs_trl.py compares)")
    result = {"settings": asdict(settings), **run_side(settings, args.side, Gate(args.gate))}
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    _child_main()
