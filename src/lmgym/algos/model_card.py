"""The model card of a finished run (``final/README.md``): what a person who finds the model on the Hugging Face
hub needs to judge it. A YAML header (``base_model``, ``library_name: lmgym``, tags for the algorithm and task)
that the hub indexes, then the task, the reward, the settings that shaped training, the held-out before/after
table and the run's reward plot (copied beside the card, so the folder stays self-contained when uploaded).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from lmgym.config import RewardConfig, TrainConfig
from lmgym.models.loading import BUILTIN_ALIASES, SMOLLM2_ALIAS

# lmgym's names for models that have a hub id (base_model must be one); the tiny test models have none.
HUB_IDS = {SMOLLM2_ALIAS: "HuggingFaceTB/SmolLM2-135M-Instruct"}
ON_POLICY = ("ppo", "nlpo", "a2c", "trpo", "reinforce", "rloo", "grpo")


def base_model(name: str) -> str | None:
    """The hub id of the model a run started from, or None (a tiny test model, or a local folder)."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    if name in BUILTIN_ALIASES or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    return name


def describe_reward(reward: RewardConfig, built_name: str) -> str:
    """The reward in words: the config's name or parts, or the task's default, and the transforms applied."""
    if reward.parts:
        joiner = " + " if reward.combine == "sum" else " · "
        power = "{w:g}·{n}" if reward.combine == "sum" else "{n}^{w:g}"
        what = joiner.join(power.format(w=p.weight, n=p.name) for p in reward.parts)
    elif reward.name:
        what = f"`{reward.name}`" + (f" ({reward.key})" if reward.key else "")
    else:
        what = f"the task's default reward (`{built_name}`)"
    changes = []
    if (reward.scale, reward.offset) != (1.0, 0.0):
        changes.append(f"{reward.offset:g} + {reward.scale:g}·r")
    if reward.clip is not None:
        changes.append(f"clipped to {list(reward.clip)}")
    if reward.normalize:
        changes.append("normalised by its running mean and std")
    if reward.per_token != "none":
        changes.append(f"credited per token ({reward.per_token})")
    return what + (f", {', '.join(changes)}" if changes else "")


def hyperparameters(config: TrainConfig, iterations: int, horizon: int) -> dict[str, Any]:
    """The settings that shaped training: the run's length and sampling, the KL penalty of on-policy algorithms,
    what trained, and every field of the algorithm's own section."""
    out: dict[str, Any] = {"algorithm": config.algo, "iterations trained": iterations, "seed": config.seed}
    if config.algo in ON_POLICY:
        out["completions per iteration (rollout.batch_size)"] = config.rollout.batch_size
        kl = config.kl
        if kl.controller == "adaptive":
            out["KL penalty"] = f"adaptive β from {kl.coef:g}, target {kl.target:g} nats per {kl.per}"
        else:
            out["KL penalty"] = f"fixed β = {kl.coef:g}"
    generation = config.generation
    out["max new tokens"] = horizon
    out["sampling"] = (
        f"temperature {generation.temperature:g}, top-k {generation.top_k}, top-p {generation.top_p:g}"
        if generation.do_sample
        else "greedy"
    )
    if config.peft is not None:
        out["trained"] = f"LoRA adapters, r = {config.peft.r}, alpha = {config.peft.alpha:g}"
    elif config.model.trainable_layers is not None:
        out["trained"] = f"the top {config.model.trainable_layers} blocks"
    for key, value in getattr(config, config.algo).model_dump(mode="json").items():
        out[f"{config.algo}.{key}"] = value
    return out


def model_card(
    config: TrainConfig,
    name: str,
    task_description: str,
    reward_name: str,
    iterations: int,
    horizon: int,
    before: dict[str, float],
    after: dict[str, float],
    plot: str | None,
    seq2seq: bool,
) -> ModelCard:
    """The card (``horizon``: the generation length trained with; ``plot``: the file name of the reward plot
    beside it, or None)."""
    base = base_model(config.model.name)
    data = ModelCardData(
        base_model=base,
        library_name="lmgym",
        pipeline_tag="text2text-generation" if seq2seq else "text-generation",
        tags=["lmgym", "reinforcement-learning", config.algo, f"task:{config.task}"],
    )
    started = f"[`{base}`](https://huggingface.co/{base})" if base else f"`{config.model.name}`"
    lines = [
        f"# {name}",
        "",
        f"{started} fine-tuned with **{config.algo.upper()}** by lmgym (reinforcement learning for language "
        f"models) on the task `{config.task}`: {task_description.rstrip('.')}.",
        "",
        "## Reward",
        "",
        describe_reward(config.reward, reward_name) + ".",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in hyperparameters(config, iterations, horizon).items()),
        "",
        "## Evaluation",
        "",
        f"{config.eval.num_prompts} held-out prompts of the `{config.eval.split}` split, sampled with seed "
        f"{config.eval.seed}, before and after training (perplexity: of the generations under the initial model).",
        "",
        "| metric | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    for key, value in after.items():
        old = before.get(key, float("nan"))
        lines.append(f"| {key} | {old:.4f} | {value:.4f} | {value - old:+.4f} |")
    if plot:
        lines += ["", f"![Training curves]({plot})"]
    auto = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    lines += [
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        "name = \"...\"  # this model's hub id, or the run's final/ folder",
        f"model = {auto}.from_pretrained(name)",
        "tokenizer = AutoTokenizer.from_pretrained(name)",
        "```",
        "",
        "Files beside the weights: `value_head.safetensors` (the critic, for actor-critic runs), `adapter/` (LoRA).",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_model_card(folder: Path, card: ModelCard, plot: Path | None) -> Path:
    """``folder``/README.md, with the plot copied beside it."""
    if plot is not None and plot.exists():
        shutil.copyfile(plot, folder / plot.name)
    path = folder / "README.md"
    card.save(path)
    return path
