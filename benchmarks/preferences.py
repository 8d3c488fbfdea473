"""ILQL (offline, logged generations + rewards) vs DPO (offline, pairs) vs PPO (online) on `sentiment`.

All three start from the bundled SmolLM2-135M-Instruct with the demo's settings (configs/demo.yaml: top 8
blocks trainable, 24 new tokens). The offline data is made once: ``--per-prompt`` completions of the first
``--prompts`` train prompts sampled from the initial model and scored by the task reward (VADER); ILQL
learns from these scored texts, DPO from the best-vs-worst pair of each prompt's completions. Every method
then trains for the same wall-clock budget (``--budget`` seconds, evaluation excluded); the offline
methods' data cost is reported beside it. The table gives held-out reward and perplexity under the
original model before and after, gradient steps and wall time.

    python benchmarks/preferences.py --budget 240 --out bench-results/preferences
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.config import load_config
from lmgym.data.preferences import comparisons_from_scored, write_jsonl
from lmgym.data.registry import load_task
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy, make_generation_config
from lmgym.rollout.logged import log_generations

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def make_offline_data(out: Path, prompts: int, per_prompt: int, threads: int) -> dict[str, float]:
    """Logged generations of the initial model, scored by the task reward, and the pairs made from them."""
    import torch

    torch.set_num_threads(threads)
    config = load_config(DEMO)
    task = load_task(config.task)
    loaded = load_model(config.model.name)
    policy = Policy(loaded.model, loaded.tokenizer, loaded.is_seq2seq, value_head="none")
    generation = make_generation_config(loaded.tokenizer, **config.generation.hf_settings(24))
    t0 = time.perf_counter()
    scored = log_generations(
        policy, task.reward, task.split("train")[:prompts], generation, config.model.max_prompt_tokens,
        per_prompt=per_prompt, seed=config.seed,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    pairs = comparisons_from_scored(scored, "pair")
    write_jsonl(out / "logged.jsonl", scored)
    write_jsonl(out / "pairs.jsonl", pairs)
    mean = sum(s.total_reward for s in scored) / len(scored)
    chosen = {c.responses[0] for c in pairs}
    best = [s.total_reward for s in scored if s.completion in chosen]
    return {
        "seconds": seconds,
        "completions": len(scored),
        "pairs": len(pairs),
        "behaviour_reward": mean,
        "chosen_reward": sum(best) / max(len(best), 1),
    }


def method_overrides(method: str, out: Path) -> list[str]:
    if method == "ppo":
        return ["algo=ppo", "rollout.batch_size=16", "ppo.minibatch_size=16"]
    if method == "dpo":
        return ["algo=dpo", f"dpo.data={out / 'pairs.jsonl'}", "dpo.lr=2e-5", "dpo.batch_size=8", "dpo.beta=0.1",
                "dpo.max_completion_tokens=25"]  # fmt: skip
    if method == "ilql":
        return ["algo=ilql", f"ilql.data={out / 'logged.jsonl'}", "ilql.lr=1e-4", "ilql.batch_size=8",
                "ilql.beta=1.0", "ilql.max_completion_tokens=25"]  # fmt: skip
    raise ValueError(f"unknown method {method!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=240, help="training seconds per method")
    parser.add_argument("--prompts", type=int, default=64, help="train prompts of the offline data")
    parser.add_argument("--per-prompt", type=int, default=4, help="logged completions per prompt")
    parser.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts evaluated (before: once)")
    parser.add_argument("--methods", default="ilql,dpo,ppo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results/preferences"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    data = make_offline_data(args.out, args.prompts, args.per_prompt, args.threads)
    console.print(f"offline data: {data}")
    rows = []
    before = None
    for method in args.methods.split(","):
        overrides = [
            *method_overrides(method, args.out), "iterations=100000", f"max_train_seconds={args.budget}",
            f"eval.num_prompts={args.eval_prompts}", f"run_dir={args.out}", f"name={method}", f"threads={args.threads}",
            "checkpoint.every=0",
        ]  # fmt: skip
        t0 = time.perf_counter()
        config = load_config(DEMO, overrides)
        trainer = get_trainer(config.algo)(config, overwrite=True, console=Console(file=io.StringIO()))
        if before is not None:  # every method starts from the same model: evaluate it once (same prompts, seed)
            trainer.before, trainer.before_samples = before
        result = trainer.train()
        before = (result.before, trainer.before_samples)
        wall = time.perf_counter() - t0
        train_seconds = sum(
            r.get("time/update", 0) + r.get("time/generate", 0) + r.get("time/score", 0) + r.get("time/reward", 0)
            for r in result.history
        )
        rows.append({
            "method": method,
            "data": "online rollouts" if method == "ppo" else ("pairs" if method == "dpo" else "scored texts"),
            "reward_before": result.before["reward"],
            "reward_after": result.after["reward"],
            "perplexity_before": result.before["perplexity"],
            "perplexity_after": result.after["perplexity"],
            "steps": int(sum(r.get("update_steps", 1) for r in result.history)),  # a PPO iteration takes several
            "train_seconds": train_seconds,
            "wall_seconds": wall,
            "data_seconds": 0.0 if method == "ppo" else data["seconds"],
        })  # fmt: skip
        console.print(rows[-1])
    (args.out / "results.json").write_text(json.dumps({"data": data, "rows": rows, "args": vars(args)}, default=str))
    lines = [
        "| method | learns from | reward before → after | perplexity before → after | gradient steps | "
        "train s | wall s (+ data s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['data']} | {r['reward_before']:+.3f} → {r['reward_after']:+.3f} | "
            f"{r['perplexity_before']:.2f} → {r['perplexity_after']:.2f} | {r['steps']} | {r['train_seconds']:.0f} | "
            f"{r['wall_seconds']:.0f} (+ {r['data_seconds']:.0f}) |"
        )
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    console.print(table)


if __name__ == "__main__":
    main()
