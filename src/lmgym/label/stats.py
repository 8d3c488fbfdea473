"""`lmgym label --stats labels.jsonl`: judgments per annotator, agreement between annotators (Cohen's κ for two,
Fleiss' κ for more), position bias (how often the response shown first wins) and, for blind A/B files, the win
rate of A over B with a 95% confidence interval. Writes ``human_eval.json`` and ``human_eval.png`` next to the file.

Agreement is on the item-level outcome of decided judgments ("a", "b" or "tie"; skips are left out). The win rate
counts a tie as half a win; the rate over decisive judgments alone (ties left out) is reported beside it. Each
judgment counts once, so with several annotators per item the intervals are somewhat too narrow.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from lmgym.label.store import active_rows, read_rows

OUTCOMES = ("a", "b", "tie")
Z95 = 1.959963984540054


def wilson(p: float, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval of a proportion ``p`` over ``n`` trials (p may count ties as halves: then the
    interval is conservative, a tie varying less than a coin flip)."""
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, center - half), min(1.0, center + half)]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def agreement(decided: list[dict[str, Any]]) -> dict[str, Any]:
    """Cohen's κ (two annotators, the items both judged) or Fleiss' κ (more: the items with the most common
    number of judgments), and the share of items judged more than once on which all agree."""
    by_item: dict[str, dict[str, str]] = {}
    for row in decided:
        by_item.setdefault(row["item"], {})[row["annotator"]] = row["winner"]
    multi = [labels for labels in by_item.values() if len(labels) >= 2]
    raters = sorted({name for labels in multi for name in labels})
    if not multi:
        return {"method": None, "kappa": None, "items": 0, "note": "no item was judged by two annotators"}
    observed = sum(len(set(labels.values())) == 1 for labels in multi) / len(multi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # κ is undefined when every judgment is the same
        if len(raters) == 2:
            from sklearn.metrics import cohen_kappa_score

            first, second = raters
            kappa = cohen_kappa_score([lb[first] for lb in multi], [lb[second] for lb in multi], labels=list(OUTCOMES))
            result = {"method": "cohen", "kappa": _finite(kappa), "items": len(multi), "annotators": raters}
        else:
            from statsmodels.stats.inter_rater import fleiss_kappa

            m = Counter(len(labels) for labels in multi).most_common(1)[0][0]
            used = [labels for labels in multi if len(labels) == m]
            table = [[sum(v == o for v in labels.values()) for o in OUTCOMES] for labels in used]
            kappa = fleiss_kappa(table, method="fleiss")
            result = {"method": "fleiss", "kappa": _finite(kappa), "items": len(used), "raters_per_item": m}
            result["annotators"] = raters
    if result["kappa"] is None:
        result["note"] = "κ is undefined: the judgments use a single outcome"
    return {**result, "observed_agreement": observed}


def position_bias(picks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How often the response shown first (left) won a pick, with a two-sided binomial test against 1/2."""
    if not picks:
        return None
    from scipy.stats import binomtest

    left = sum(row["winner"] == row["shown_order"][0] for row in picks)
    test = binomtest(left, len(picks), 0.5)
    ci = test.proportion_ci(0.95, method="wilson")
    return {"picks": len(picks), "left_wins": left, "left_win_rate": left / len(picks),
            "ci95": [ci.low, ci.high], "p_value": test.pvalue}  # fmt: skip


def win_rates(decided: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per blind A/B comparison in the file: A's wins, B's wins and ties, A's win rate with ties as half a win
    (Wilson 95% CI), and over decisive judgments alone."""
    groups: dict[tuple[str, str], Counter] = {}
    for row in decided:
        source = row.get("source") or {}
        if source.get("kind") == "eval":
            groups.setdefault((source["a"], source["b"]), Counter())[row["winner"]] += 1
    out = []
    for (a, b), counts in groups.items():
        wins, losses, ties = counts["a"], counts["b"], counts["tie"]
        n = wins + losses + ties
        rate = (wins + ties / 2) / n
        entry = {"A": a, "B": b, "a_wins": wins, "b_wins": losses, "ties": ties, "judgments": n,
                 "win_rate_a": rate, "ci95": wilson(rate, n), "ties_counted": "as half a win"}  # fmt: skip
        if wins + losses:
            decisive = wins / (wins + losses)
            entry |= {"win_rate_a_decisive": decisive, "ci95_decisive": wilson(decisive, wins + losses)}
        out.append(entry)
    return out


def label_stats(path: Path) -> dict[str, Any]:
    """Every statistic of the labels file at ``path`` (a last line cut short by a crash is ignored)."""
    rows = read_rows(path)
    active = list(active_rows(rows).values())
    annotators: dict[str, Counter] = {}
    for row in active:
        annotators.setdefault(row.get("annotator", "?"), Counter())[row["judgment"]] += 1
    for row in rows:
        if row.get("judgment") == "undo":
            annotators.setdefault(row.get("annotator", "?"), Counter())["undone"] += 1
    decided = [r for r in active if r["judgment"] in ("pick", "tie") and r.get("item") and r.get("winner") in OUTCOMES]
    picks = [r for r in decided if r["judgment"] == "pick" and len(r.get("shown_order") or ()) == 2]
    per = {name: {k: c[k] for k in ("pick", "tie", "skip", "undone")} for name, c in sorted(annotators.items())}
    return {
        "file": str(path),
        "judgments": len(active),
        "comparisons": sum(r["judgment"] == "pick" for r in active),
        "annotators": per,
        "agreement": agreement(decided),
        "position_bias": position_bias(picks),
        "eval": win_rates(decided),
    }


def plot(stats: dict[str, Any], out: Path) -> Path:
    """Bars: judgments per annotator by kind; A wins / ties / B wins of a blind A/B file, else the picks won by
    the first- and second-shown response."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(stats["annotators"]) or ["-"]
    bottom = [0] * len(names)
    for kind, color in (("pick", "#3867d6"), ("tie", "#a5b1c2"), ("skip", "#d1d8e0")):
        values = [stats["annotators"].get(n, {}).get(kind, 0) for n in names]
        left.bar(names, values, bottom=bottom, label=kind, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.set_title("judgments per annotator")
    left.legend(fontsize=8)
    if stats["eval"]:
        e = stats["eval"][0]
        colors = ["#20bf6b", "#a5b1c2", "#eb3b5a"]
        right.bar(["A wins", "ties", "B wins"], [e["a_wins"], e["ties"], e["b_wins"]], color=colors)
        lo, hi = e["ci95"]
        right.set_title(f"A's win rate {e['win_rate_a']:.2f} (95% CI {lo:.2f}–{hi:.2f}, ties = ½)", fontsize=10)
    elif stats["position_bias"]:
        p = stats["position_bias"]
        right.bar(["shown first", "shown second"], [p["left_wins"], p["picks"] - p["left_wins"]], color="#3867d6")
        right.set_title(f"picks won by position (p = {p['p_value']:.3g})", fontsize=10)
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_stats(path: Path) -> tuple[dict[str, Any], Path, Path]:
    """Compute the statistics and write ``human_eval.json`` and ``human_eval.png`` beside the labels file."""
    stats = label_stats(path)
    json_path = path.with_name("human_eval.json")
    json_path.write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats, json_path, plot(stats, path.with_name("human_eval.png"))
