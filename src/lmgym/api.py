"""Programmatic entry points: `train` and `evaluate_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from lmgym.algos import TrainResult, get_trainer
from lmgym.config import TrainConfig, load_config
from lmgym.data.registry import load_task
from lmgym.errors import InputError
from lmgym.models.loading import load_model
from lmgym.models.policy import ReferenceModel
from lmgym.rewards.factory import build_reward
from lmgym.rollout.evaluation import evaluate
from lmgym.rollout.metric_set import MetricSet
from lmgym.rollout.sampling import generation_config, load_policy
from lmgym.tracking import RunDir


def train(
    config: TrainConfig | str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train from a config (object or YAML path) with ``--set``-style overrides.

    ``kwargs`` go to the trainer: ``task=``, ``reward=`` (any reward callable), ``loaded=`` (a `LoadedModel`),
    ``callbacks=[...]`` (objects with any of ``on_iteration_end(iteration, metrics, trainer)``,
    ``on_evaluate(iteration, metrics)``, ``on_save(path)``; see `lmgym.algos.trainer.Callback`).
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise InputError("overrides apply to YAML configs; edit the TrainConfig object directly")
    trainer = get_trainer(config.algo)(config, console=console, resume=resume, overwrite=overwrite, **kwargs)
    return trainer.train()


def evaluate_run(
    run: str | Path, split: str | None = None, num_prompts: int | None = None, console: Console | None = None
) -> dict[str, float]:
    """Re-evaluate a finished run's final policy against the initial model: the evaluation's own metrics and the
    run's ``eval.metrics`` (a metric that cannot run here is left out, and said so on ``console``)."""
    run_dir = RunDir(Path(run))
    config = run_dir.config()
    task = load_task(config.task, **config.task_args)
    metric_set = MetricSet.for_task(task, config.eval.metrics)
    policy = load_policy(str(run_dir.final_model()), config, task)
    base = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code)
    reward = build_reward(config.reward, task.reward)
    if reward is None:
        raise InputError(f"task {config.task!r} has no default reward and the run's config names none")
    samples = task.split(split or config.eval.split)[: num_prompts or config.eval.num_prompts]
    metrics, records = evaluate(
        policy,
        ReferenceModel(base.model, base.is_seq2seq),
        reward,
        samples,
        generation_config(config.generation, task, policy.tokenizer),
        config.model.max_prompt_tokens,
        config.eval.batch_size,
        config.eval.seed,
    )
    scored = metric_set.score(samples, [r["generation"] for r in records])
    for name, why in scored.missing.items():
        if console is not None:
            console.print(f"eval.metrics: {name} is left out: {why}", highlight=False, markup=False)
    return {**metrics, **{k: v for k, v in scored.scores.items() if k not in metrics}}
