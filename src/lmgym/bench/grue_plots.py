"""Plots of the GRUE bench: training reward per iteration, and final reward against perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _train_rewards(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = record.get("reward/task")
        if record.get("kind") == "train" and isinstance(value, (int, float)) and math.isfinite(value):
            points.append((int(record["iteration"]), float(value)))
    return points


def plot_reward_curves(task: str, runs: dict[str, Path], path: Path) -> Path | None:
    """Task reward of the training rollouts per iteration, one line per algorithm that logs one
    (supervised training logs a loss, not a reward, and is left out). None when no run has any."""
    curves = {algo: pts for algo, run in runs.items() if (pts := _train_rewards(run))}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for algo, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None, label=algo)
    ax.set(title=f"{task}: training reward", xlabel="iteration", ylabel="task reward (rollout mean)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reward_vs_perplexity(task: str, row: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """One point per finished cell: held-out reward (up is better) against perplexity under the original
    model (left is more fluent)."""
    points = {}
    for algo, result in row.items():
        scores = result.get("scores", {})
        reward, ppl = scores.get("reward"), scores.get("perplexity")
        if isinstance(reward, (int, float)) and isinstance(ppl, (int, float)) and math.isfinite(ppl):
            points[algo] = (float(ppl), float(reward))
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for algo, (ppl, reward) in points.items():
        ax.scatter([ppl], [reward])
        ax.annotate(algo, (ppl, reward), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(title=f"{task}: reward vs perplexity", xlabel="perplexity under the original model", ylabel="reward")
    if max(p for p, _ in points.values()) > 20 * max(min(p for p, _ in points.values()), 1e-9):
        ax.set_xscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
