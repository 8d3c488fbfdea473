"""`lmgym rm train`: a reward model fit to comparisons from a file or made by a hidden rule (the rule stands
in for a human rater, so that the learned model can be checked against the rule it must recover).

The output folder (lmgym.models.reward_model) also holds ``comparisons-train.jsonl`` /
``comparisons-eval.jsonl``, ``config.yaml`` and ``metrics.jsonl``; it is a reward: ``reward: {name: <folder>}``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from lmgym.algos.rm import RewardModelFit, pairwise_accuracy
from lmgym.config import ConfigError, TrainConfig, dump_config
from lmgym.data.preferences import (
    Comparison,
    comparisons_from_scored,
    hidden_rule_comparisons,
    load_comparisons,
    rank_by_rule,
    write_jsonl,
)
from lmgym.data.registry import load_task
from lmgym.distributed import Distributed
from lmgym.errors import InputError, MissingFileError, RunExistsError
from lmgym.models.reward_model import RewardModel, load_reward_model, load_trunk
from lmgym.rewards.base import Reward
from lmgym.rewards.lexicon import LexiconRule
from lmgym.rollout.logged import log_generations
from lmgym.rollout.sampling import generation_config, load_policy


def rule_reward(config: TrainConfig, task) -> Reward:
    if config.rm.rule == "lexicon":
        return LexiconRule()
    if task.reward is None:
        raise ConfigError(f"rm.rule=task: task {config.task!r} has no reward to rank responses by")
    return task.reward


def hidden_rule_data(config: TrainConfig, task, tokenizer) -> list[Comparison]:
    """Comparisons a rater following the hidden rule would give, on the task's train prompts."""

    cfg = config.rm
    rule = rule_reward(config, task)
    samples = task.split("train")
    if cfg.responses == "words":
        return hidden_rule_comparisons(
            samples, rule, tokenizer, cfg.k, cfg.comparisons_per_prompt, config.seed, ranked=cfg.loss != "best_of_k",
            noise=cfg.noise,
        )  # fmt: skip
    policy = load_policy(config.model.name, config, task)
    generation = generation_config(config.generation, task, policy.tokenizer)
    prompts = [s for s in samples for _ in range(cfg.comparisons_per_prompt)]
    scored = log_generations(policy, rule, prompts, generation, config.model.max_prompt_tokens, cfg.k, seed=config.seed)
    ranked = comparisons_from_scored(scored, "ranking")
    if cfg.noise > 0 or cfg.loss == "best_of_k":
        rng = random.Random(config.seed)
        by_text = {(s.prompt, s.completion): s.total_reward for s in scored}
        redone = [
            rank_by_rule(c.id, c.prompt, c.responses, [by_text[(c.prompt, r)] for r in c.responses],
                         cfg.loss != "best_of_k", cfg.noise, rng)
            for c in ranked
        ]  # fmt: skip
        ranked = [c for c in redone if c is not None]
    return ranked


def train_reward_model(
    config: TrainConfig, console: Console | None = None, overwrite: bool = False
) -> tuple[Path, dict[str, float]]:
    """Train a reward model as configured in ``config.rm``; returns its folder and held-out metrics."""

    # Several processes train one model data parallel (on their CPUs, like a single process does); the main
    # process alone prints and writes.
    dist = Distributed.setup("no", "cpu", "none")
    console = (console or Console()) if dist.is_main else Console(quiet=True)
    cfg = config.rm
    if dist.enabled and cfg.batch_size % dist.world_size:
        raise ConfigError(f"rm.batch_size={cfg.batch_size} must split over {dist.world_size} processes")
    name = config.name or f"{config.task}-rm-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(config.run_dir) / name
    exists = root.exists() and any(root.iterdir())
    if exists and not overwrite:
        raise RunExistsError(f"run folder {root} exists; pass --overwrite to replace it, or --set name=...")
    dist.barrier()  # every process has looked before the main one clears or writes it
    if exists and dist.is_main:
        shutil.rmtree(root)
    torch.manual_seed(config.seed)
    dist.set_threads(config.threads)
    if cfg.init is not None:
        model, _ = load_reward_model(cfg.init)
        model.max_length = cfg.max_length
    else:
        trunk, tokenizer, kind = load_trunk(cfg.model)
        model = RewardModel(trunk, tokenizer, kind, cfg.pooling, cfg.max_length)
    task = load_task(config.task, **config.task_args)
    if cfg.data == "hidden-rule":
        comparisons = hidden_rule_data(config, task, model.tokenizer)
        source = f"hidden rule ({cfg.rule}, {cfg.responses})"
    else:
        if not Path(cfg.data).expanduser().exists():
            raise MissingFileError(f"rm.data: {cfg.data!r} is neither 'hidden-rule' nor an existing JSONL file")
        comparisons = load_comparisons(cfg.data)
        source = cfg.data
    if cfg.loss == "best_of_k" and any(c.ranked and len(c.responses) > 2 for c in comparisons):
        console.print("rm.loss=best_of_k on rankings: only 'the first beats the rest' of each ranking is used")
    shuffled = list(comparisons)
    random.Random(config.seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * cfg.eval_fraction))
    if len(shuffled) - n_eval < 1:
        raise InputError(f"{source}: {len(shuffled)} comparisons are too few to hold {n_eval} out for evaluation")
    eval_set, train_set = shuffled[:n_eval], shuffled[n_eval:]
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        write_jsonl(root / "comparisons-train.jsonl", train_set)
        write_jsonl(root / "comparisons-eval.jsonl", eval_set)
    dist.broadcast_parameters(model)  # replicas start equal even if a random head init differed
    fit = RewardModelFit(model, cfg, dist)
    steps = cfg.epochs * math.ceil(len(fit.elements(train_set)) / cfg.batch_size)
    before = pairwise_accuracy(model, eval_set)
    console.print(
        f"reward model on {model.kind} trunk {cfg.init or cfg.model}: {len(train_set)} train / {len(eval_set)} "
        f"held-out comparisons from {source}; {steps} steps; held-out pairwise accuracy before: {before:.3f}"
    )
    metrics_file = (root / "metrics.jsonl").open("a", encoding="utf-8") if dist.is_main else None
    t0 = time.perf_counter()

    def log(step: int, loss: float) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps({"step": step, "kind": "train", "loss": loss}) + "\n")
        if step % max(1, steps // 10) == 0 or step == steps:
            console.print(f"step {step:>5}/{steps}  loss {loss:.4f}", highlight=False)

    fit.fit(train_set, steps, config.seed, log)
    seconds = time.perf_counter() - t0
    if cfg.normalize:
        fit.normalize(train_set)
    metrics = {
        "eval/pairwise_accuracy": pairwise_accuracy(model, eval_set),
        "eval/pairwise_accuracy_before": before,
        "train/pairwise_accuracy": pairwise_accuracy(model, train_set),
        "train_seconds": seconds,
        "n_train": len(train_set),
        "n_eval": len(eval_set),
    }
    if metrics_file is not None:
        metrics_file.write(json.dumps({"kind": "eval", **metrics}) + "\n")
        metrics_file.close()
        model.save(root, {"metrics": metrics, "data": source, "task": config.task, "loss": cfg.loss})
    dist.barrier()
    console.print(
        f"held-out pairwise accuracy {metrics['eval/pairwise_accuracy']:.3f} (before {before:.3f}, train "
        f"{metrics['train/pairwise_accuracy']:.3f}); reward model written to [bold]{root}[/]"
    )
    return root, metrics
