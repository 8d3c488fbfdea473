"""Every on-policy algorithm on the `sentiment` task with the bundled model, same budget.

Each algorithm starts from the same bundled SmolLM2-135M-Instruct with the demo's
settings (configs/demo.yaml: top 8 blocks trainable, 24 new tokens, adaptive KL),
draws from the same prompt pool, generates the same number of completions per
iteration and stops at the same iteration cap or wall-clock cap, whichever comes
first. It writes a table (held-out reward, perplexity under the reference,
distinct-2, wall time) and a plot of the training reward per iteration.

    python benchmarks/algorithms.py --max-seconds 150 --out bench-results/algorithms

`--algos trpo --merge` re-runs some algorithms and keeps the other rows of an earlier results.json.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from rich.console import Console

from lmgym.api import train
from lmgym.config import load_config

ALGOS = ("ppo", "nlpo", "a2c", "trpo", "reinforce", "rloo", "grpo")
DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def algo_overrides(algo: str, lr: float) -> list[str]:
    if algo == "trpo":  # the policy takes natural-gradient steps; lr is the value regression's
        return ["trpo.max_kl=0.02", "trpo.minibatch_size=16"]
    out = [f"{algo}.lr={lr}", f"{algo}.minibatch_size=16"]
    if algo in ("ppo", "nlpo"):
        out.append(f"{algo}.epochs=2")
    return out


def run(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    results = []
    for algo in args.algos.split(","):
        overrides = [
            f"algo={algo}",
            f"iterations={args.iterations}",
            f"max_train_seconds={args.max_seconds}",
            f"rollout.batch_size={args.batch_size}",
            f"eval.num_prompts={args.eval_prompts}",
            f"run_dir={out}",
            f"name={algo}",
            "checkpoint.every=0",
            *algo_overrides(algo, args.lr),
        ]
        config = load_config(DEMO, overrides)
        console.print(f"[bold]{algo}[/]: lmgym train configs/demo.yaml " + " ".join(f"--set {o}" for o in overrides))
        log = io.StringIO()
        t0 = time.perf_counter()
        result = train(config, overwrite=True, console=Console(file=log, width=140))
        wall = time.perf_counter() - t0
        (out / f"{algo}.log").write_text(log.getvalue(), encoding="utf-8")
        row = {
            "algo": algo,
            "iterations": len(result.history),
            "reward_before": result.before["reward"],
            "reward_after": result.after["reward"],
            "perplexity_before": result.before["perplexity"],
            "perplexity_after": result.after["perplexity"],
            "distinct2_after": result.after["distinct-2"],
            "wall_s": wall,
            "train_reward": [r["reward/task"] for r in result.history],
        }
        results.append(row)
        console.print(
            f"  reward {row['reward_before']:+.3f} → {row['reward_after']:+.3f}, perplexity "
            f"{row['perplexity_before']:.1f} → {row['perplexity_after']:.1f}, {row['iterations']} iterations, "
            f"{wall:.0f} s"
        )
    if args.merge and (out / "results.json").exists():
        fresh = {r["algo"] for r in results}
        earlier = [r for r in json.loads((out / "results.json").read_text(encoding="utf-8")) if r["algo"] not in fresh]
        results = sorted(earlier + results, key=lambda r: ALGOS.index(r["algo"]) if r["algo"] in ALGOS else len(ALGOS))
    write_outputs(results, out)
    return results


def write_outputs(results: list[dict], out: Path) -> None:
    lines = [
        "| algo | iterations | held-out reward (before → after) | perplexity (before → after) | distinct-2 | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['algo']} | {r['iterations']} | {r['reward_before']:+.3f} → {r['reward_after']:+.3f} | "
            f"{r['perplexity_before']:.1f} → {r['perplexity_after']:.1f} | {r['distinct2_after']:.3f} | "
            f"{r['wall_s']:.0f} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(range(1, len(r["train_reward"]) + 1), r["train_reward"], label=r["algo"])
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean task reward (train batch)")
    ax.set_title("sentiment, SmolLM2-135M-Instruct, same budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_per_iteration.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--iterations", type=int, default=40, help="iteration cap")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="wall-clock cap of training per algorithm")
    parser.add_argument("--batch-size", type=int, default=32, help="completions per iteration")
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--out", default="bench-results/algorithms")
    parser.add_argument("--merge", action="store_true", help="keep earlier rows of algorithms not re-run")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
