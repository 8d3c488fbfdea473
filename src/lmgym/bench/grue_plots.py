"""Plots of the GRUE bench: training reward per iteration, and final reward against perplexity, with the spread
over seeds (a band and one thin line per seed; one dot per seed and the 95% intervals of the mean)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Curve = list[tuple[int, float]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def train_rewards(run: Path) -> Curve:
    """Task reward of a run's training rollouts per iteration, from its metrics.jsonl (empty when it has none)."""
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


def _mean_band(seeds: dict[str, Curve]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per iteration any seed reached: the mean over the seeds that reached it, and the lowest and highest."""
    by_iteration: dict[int, list[float]] = {}
    for points in seeds.values():
        for iteration, value in points:
            by_iteration.setdefault(iteration, []).append(value)
    iterations = sorted(by_iteration)
    values = [by_iteration[i] for i in iterations]
    return iterations, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_reward_curves(task: str, curves: dict[str, dict[str, Curve]], path: Path) -> Path | None:
    """Task reward of the training rollouts per iteration: per algorithm, the mean over seeds, a band from the
    lowest to the highest seed and a thin line per seed (supervised training logs a loss, not a reward, and is
    left out). ``curves``: algorithm → seed → points. None when no run has any."""
    curves = {algo: seeds for algo, seeds in curves.items() if any(seeds.values())}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for algo, seeds in curves.items():
        iterations, mean, low, high = _mean_band(seeds)
        label = algo if len(seeds) == 1 else f"{algo} (mean of {len(seeds)} seeds)"
        (line,) = ax.plot(iterations, mean, marker="." if len(iterations) < 30 else None, label=label)
        if len(seeds) > 1:
            ax.fill_between(iterations, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
            for points in seeds.values():
                ax.plot([p[0] for p in points], [p[1] for p in points], color=line.get_color(), alpha=0.35, lw=0.7)
    ax.set(title=f"{task}: training reward", xlabel="iteration", ylabel="task reward (rollout mean)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite_pair(pair: Any) -> tuple[float, float] | None:
    if pair is None:
        return None
    x, y = pair
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y))
    return (float(x), float(y)) if ok else None


def plot_reward_vs_perplexity(task: str, points: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Held-out reward (up is better) against perplexity under the original model (left is more fluent): per
    algorithm a dot per seed and the mean with its 95% intervals as error bars. ``points``: algorithm →
    {"seeds": [(ppl, reward)], "mean": (ppl, reward), "perplexity_ci": (low, high) | None, "reward_ci": ...}."""
    means = {a: m for a, p in points.items() if (m := _finite_pair(p.get("mean"))) is not None}
    if not means:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4))
    xs = []
    for algo, (ppl, reward) in means.items():
        seeds = [s for p in points[algo].get("seeds", []) if (s := _finite_pair(p)) is not None]
        xerr = _error(ppl, points[algo].get("perplexity_ci"))
        yerr = _error(reward, points[algo].get("reward_ci"))
        bar = ax.errorbar([ppl], [reward], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=algo)
        if len(seeds) > 1:
            color = bar.lines[0].get_color()
            ax.scatter([s[0] for s in seeds], [s[1] for s in seeds], s=10, color=color, alpha=0.5)
        xs += [ppl] + [s[0] for s in seeds]
        ax.annotate(algo, (ppl, reward), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(title=f"{task}: reward vs perplexity", xlabel="perplexity under the original model", ylabel="reward")
    if max(xs) > 20 * max(min(xs), 1e-9):
        ax.set_xscale("log")
    ax.text(0.01, 0.01, "bars: 95% bootstrap intervals; dots: seeds", transform=ax.transAxes, fontsize=7, alpha=0.7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _error(value: float, interval: Any) -> list[list[float]] | None:
    """Asymmetric error bar of an interval around ``value`` (None without one)."""
    if interval is None or any(v is None or not math.isfinite(v) for v in interval):
        return None
    low, high = interval
    return [[max(value - low, 0.0)], [max(high - value, 0.0)]]
