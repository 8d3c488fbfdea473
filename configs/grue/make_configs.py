"""Write the GRUE configs: ``<profile>/<task>/<algo>.yaml`` for every task × algorithm.

    python configs/grue/make_configs.py     # rewrites configs/grue/{offline,hub}/**

``hub``: the models and PPO/NLPO settings of the published GRUE runs (RL4LMs' task configs:
model, episode length, learning rate, epochs, minibatch, rollout size = n_steps × n_envs, KL
coefficient and target, sampling top-k, iterations), for users with a network. RL4LMs steers β once
per rollout on the mean KL per generated token, β ← β·(1 + 0.1·clip((KL − target)/target, ±0.2)):
``kl.per: token`` and ``kl.update_rate: 0.1`` reproduce that rule, so their ``target_kl`` is carried
over as ``kl.target`` in its own unit. Their supervised runs are not reproduced here: the ``sft``
settings are lmgym's (lr 1e-4 for T5, 1e-5 for GPT-2).

``offline``: the bundled SmolLM2-135M-Instruct on the offline generators, sized for a laptop CPU
(top 8 blocks trained, rollouts of 16, 20 RL iterations, 30 supervised steps of 16 references cut
to the task's horizon). Each cell is scored on 128 held-out prompts (``OFFLINE_EVAL_PROMPTS``), enough
for the leaderboard's bootstrap intervals to separate differences of a few reward points; the
generators are asked for as many test rows (``task_args.n_test``). NarrativeQA's offline generator
writes a fixed 30 test stories of three questions, so that task is scored on its 90.

``sft+ppo``/``sft+nlpo`` files are PPO/NLPO configs; `lmgym bench grue` points their ``model.name``
at the ``sft`` cell's final model. Edit the tables below and rerun rather than the YAML files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
ALGOS = ("zero-shot", "sft", "ppo", "nlpo", "sft+ppo", "sft+nlpo")

# task: (hub model, max_prompt_tokens, max_new_tokens, top_k, lr, rollout, kl coef, kl target, iterations, reward args)
HUB = {
    "imdb": ("lvwerra/gpt2-imdb", 64, 48, 0, 1e-6, 1280, 0.1, 0.1, 50, {}),
    "commongen": ("t5-base", 20, 20, 0, 2e-6, 2560, 0.001, 2.0, 200, {"reward": "meteor"}),
    "cnn_dailymail": ("t5-base", 512, 100, 50, 2e-6, 5120, 0.001, 0.2, 100, {"reward": "rouge-1"}),
    "totto": ("t5-base", 512, 50, 0, 2e-6, 2560, 0.001, 2.0, 100, {"reward": "meteor"}),
    "narrativeqa": ("t5-base", 512, 50, 50, 2e-6, 2560, 0.001, 1.0, 100, {"reward": "rouge_l_max"}),
    "wmt16": ("t5-base", 128, 128, 10, 1e-6, 5120, 0.001, 0.2, 50, {"reward": "ter"}),
    "iwslt2017": ("t5-base", 128, 128, 10, 1e-6, 5120, 0.001, 0.2, 50, {"reward": "ter"}),
    "dailydialog": ("gpt2", 128, 20, 20, 1e-6, 1280, 0.2, 0.5, 200, {"intent_weight": 0.75}),
}
# NLPO mask settings of RL4LMs' NLPO configs where they differ from "top-p 0.9, refreshed every 5 iterations"
# (the default here; the other tasks' NLPO files were not checked against RL4LMs).
HUB_NLPO = {"imdb": {"min_tokens_to_keep": 100}, "commongen": {"mask_update_every": 20}}
OFFLINE_EVAL_PROMPTS = 128  # held-out prompts scored per offline cell
# task: (max_prompt_tokens, max_new_tokens) for the bundled model on the offline data
OFFLINE = {
    "imdb": (96, 24),
    "commongen": (32, 20),
    "cnn_dailymail": (256, 48),
    "totto": (192, 32),
    "narrativeqa": (192, 16),
    "wmt16": (48, 32),
    "iwslt2017": (48, 32),
    "dailydialog": (128, 20),
}


def hub_config(task: str, algo: str) -> dict[str, Any]:
    model, prompt_tokens, new_tokens, top_k, lr, rollout, kl_coef, kl_target, iterations, reward = HUB[task]
    config: dict[str, Any] = {
        "task": task,
        "task_args": {"source": "hub", **reward},
        "model": {"name": model, "max_prompt_tokens": prompt_tokens, "freeze_embeddings": False},
        "generation": {"max_new_tokens": new_tokens, "top_k": top_k},
        "eval": {"split": "test", "num_prompts": 5000 if task == "imdb" else 2000, "batch_size": 64},
        "checkpoint": {"every": 5, "keep": 2},
    }
    config = _with_algo(
        config, algo, lr, rollout, 64, 5, kl_coef, kl_target, iterations, sft_lr=1e-5 if "gpt2" in model else 1e-4
    )
    if "kl" in config:  # RL4LMs' controller: per-token KL, a fixed rate of 0.1 per rollout
        config["kl"].update(per="token", update_rate=0.1)
    if algo.endswith("nlpo"):
        config["nlpo"].update(HUB_NLPO.get(task, {}))
    return config


def offline_config(task: str, algo: str) -> dict[str, Any]:
    prompt_tokens, new_tokens = OFFLINE[task]
    config: dict[str, Any] = {
        "task": task,
        "task_args": {"source": "offline", "n_test": OFFLINE_EVAL_PROMPTS},
        "model": {
            "name": "smollm2-135m-instruct",
            "max_prompt_tokens": prompt_tokens,
            "freeze_embeddings": True,
            "trainable_layers": 8,  # the top 8 of 30 blocks: half the update cost on a CPU (see configs/demo.yaml)
        },
        "generation": {"max_new_tokens": new_tokens},
        "eval": {"split": "test", "num_prompts": OFFLINE_EVAL_PROMPTS, "batch_size": 16},
        "checkpoint": {"every": 5, "keep": 1},
    }
    config = _with_algo(config, algo, 1e-4, 16, 8, 2, 0.05, 4.0, 20, sft_lr=1e-4)
    if algo == "sft":  # 30 steps of 16 (~0.6 epoch): a CPU-sized supervised row, trained on what fits the horizon
        config["iterations"] = 30
        config["sft"].update(batch_size=16, max_completion_tokens=new_tokens)
    return config


def _with_algo(
    config: dict[str, Any],
    algo: str,
    lr: float,
    rollout: int,
    minibatch: int,
    epochs: int,
    kl_coef: float,
    kl_target: float,
    iterations: int,
    sft_lr: float,
) -> dict[str, Any]:
    if algo == "zero-shot":
        return {"algo": "ppo", "iterations": 1, **config}  # only model, task, generation and eval are read
    if algo == "sft":
        return {
            "algo": "sft",
            "iterations": iterations * 5,  # gradient steps
            **config,
            "sft": {"lr": sft_lr, "batch_size": minibatch * 2, "data": "references"},
        }
    rl = algo.removeprefix("sft+")
    section: dict[str, Any] = {"lr": lr, "epochs": epochs, "minibatch_size": minibatch, "clip_range": 0.2}
    if rl == "nlpo":
        section.update(mask_top_p=0.9, mask_update_every=5)
    return {
        "algo": rl,
        "iterations": iterations,
        **config,
        "rollout": {"batch_size": rollout},
        "kl": {"controller": "adaptive", "coef": kl_coef, "target": kl_target},
        rl: section,
    }


def main() -> None:
    for profile, make, tasks in (("hub", hub_config, HUB), ("offline", offline_config, OFFLINE)):
        for task in tasks:
            folder = ROOT / profile / task
            folder.mkdir(parents=True, exist_ok=True)
            for algo in ALGOS:
                header = f"# GRUE {task} × {algo} ({profile} profile). Generated by configs/grue/make_configs.py.\n"
                if algo.startswith("sft+"):
                    header += "# `lmgym bench grue` replaces model.name with the sft cell's final model.\n"
                if algo == "zero-shot":
                    header += "# No training: the bench scores the initial model with these settings.\n"
                body = yaml.safe_dump(make(task, algo), sort_keys=False)
                (folder / f"{algo}.yaml").write_text(header + body, encoding="utf-8")


if __name__ == "__main__":
    main()
