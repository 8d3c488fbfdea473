"""Programmatic entry points: `train` and `evaluate_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from lmgym.algos import TrainResult, get_trainer
from lmgym.config import TrainConfig, load_config
from lmgym.errors import InputError, MissingFileError
from lmgym.evaluation import evaluate
from lmgym.models.loading import load_model, set_truncation_side
from lmgym.models.policy import Policy, ReferenceModel, make_generation_config
from lmgym.rewards.factory import build_reward


def train(
    config: TrainConfig | str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train from a config (object or YAML path) with ``--set``-style overrides.

    ``kwargs`` go to the trainer: ``task=``, ``reward=`` (any reward callable),
    ``loaded=`` (a `LoadedModel`).
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise InputError("overrides apply to YAML configs; edit the TrainConfig object directly")
    trainer = get_trainer(config.algo)(config, console=console, resume=resume, overwrite=overwrite, **kwargs)
    return trainer.train()


def evaluate_run(run: str | Path, split: str | None = None, num_prompts: int | None = None) -> dict[str, float]:
    """Re-evaluate a finished run's final policy against the initial model."""
    from lmgym.data.task import load_task

    run = Path(run)
    if not (run / "config.yaml").exists():
        raise MissingFileError(f"{run} is not a run folder (no config.yaml)")
    # A LoRA run with peft.merge_on_save=false leaves only final/adapter/, which loads onto its base model.
    final_dir = run / "final" if (run / "final" / "config.json").exists() else run / "final" / "adapter"
    if not (final_dir / "config.json").exists() and not (final_dir / "adapter_config.json").exists():
        raise MissingFileError(f"{run} has no final/ model; it has not finished (resume it with --resume)")
    config = load_config(run / "config.yaml")
    task = load_task(config.task, **config.task_args)
    base = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code)
    final = load_model(str(final_dir), config.model.dtype, config.model.trust_remote_code)
    set_truncation_side(final.tokenizer, config.model.truncation_side, task.truncation_side)
    policy = Policy(final.model, final.tokenizer, final.is_seq2seq, value_head="none")
    reference = ReferenceModel(base.model, base.is_seq2seq)
    max_new = config.generation.max_new_tokens or int(task.generation.get("max_new_tokens", 32))
    generation = make_generation_config(final.tokenizer, **config.generation.hf_settings(max_new))
    samples = task.split(split or config.eval.split)[: num_prompts or config.eval.num_prompts]
    reward = build_reward(config.reward, task.reward)
    if reward is None:
        raise InputError(f"task {config.task!r} has no default reward and the run's config names none")
    metrics, _ = evaluate(
        policy,
        reference,
        reward,
        samples,
        generation,
        config.model.max_prompt_tokens,
        config.eval.batch_size,
        config.eval.seed,
    )
    return metrics
