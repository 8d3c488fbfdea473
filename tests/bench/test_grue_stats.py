"""The GRUE leaderboard's statistics on synthetic per-prompt scores (no training): bootstrap intervals, paired
comparisons, the "RL beats supervised?" answer, the verdicts on GRUE's findings and --report from result files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from lmgym.bench import grue_stats as stats
from lmgym.bench.grue import findings_table, run_grue
from lmgym.bench.grue_stats import CellData, PerPrompt, bootstrap, rl_vs_supervised

N = 128
IDS = tuple(f"imdb-test-{i:05d}" for i in range(N))
BASE = np.random.default_rng(0).uniform(0.2, 0.8, N)  # per-prompt difficulty, shared by every cell
TOKENS = np.random.default_rng(1).integers(8, 24, N).astype(float)


def noise(seed: int, scale: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, N)


def cell(
    algo: str,
    rewards: np.ndarray | list[np.ndarray],
    nll_per_token: float | list[float] = 3.5,
    iterations: dict[int, int] | None = None,
    budget: float | None = 120.0,
) -> CellData:
    """A task × algorithm with one row of per-prompt rewards per seed and perplexity exp(nll_per_token)."""
    rows = np.atleast_2d(np.asarray(rewards, dtype=float))
    levels = np.broadcast_to(np.asarray(nll_per_token, dtype=float), (rows.shape[0],))
    nll = np.stack([TOKENS * (level + 0.3 * np.sin(np.arange(N))) for level in levels])
    tokens = np.stack([TOKENS] * rows.shape[0])
    data = PerPrompt(IDS, {"reward": rows, "nll_sum": nll, "tokens": tokens})
    perplexity = float(np.mean([math.exp(n.sum() / t.sum()) for n, t in zip(nll, tokens, strict=True)]))
    means = {"reward": float(rows.mean()), "perplexity": perplexity}
    return CellData(algo, means, data, iterations or dict.fromkeys(range(rows.shape[0]), 10), budget)


def test_bootstrap_is_deterministic_for_a_seed():
    data = cell("ppo", BASE + noise(2, 0.1)).per_prompt
    first = bootstrap([(1.0, data)], "reward")
    stats._CACHE.clear()  # recompute rather than reuse the interval the leaderboard would reuse
    assert bootstrap([(1.0, data)], "reward") == first
    assert first.estimate == pytest.approx(data.values["reward"].mean())
    assert first.low < first.estimate < first.high and first.width == pytest.approx(first.high - first.low)
    other = bootstrap([(1.0, data)], "reward", seed=1)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)
    # About ±2 standard errors of the mean of 128 prompts.
    se = data.values["reward"].std(ddof=1) / math.sqrt(N)
    assert first.width == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_identical_cells_are_within_noise():
    for rewards in (BASE, [BASE + noise(3, 0.05), BASE + noise(4, 0.05)]):  # one seed, two seeds
        cells = {"sft": cell("sft", rewards), "ppo": cell("ppo", rewards)}
        verdict = rl_vs_supervised(cells)
        assert verdict["verdict"] == "within noise"
        interval = verdict["difference"]["interval"]
        assert interval["low"] <= 0 <= interval["high"] and verdict["difference"]["estimate"] == 0


@pytest.mark.parametrize(("margin", "answer"), [(0.1, "yes"), (-0.1, "no"), (0.0, "within noise")])
def test_a_fixed_margin_beyond_the_noise_is_seen_in_its_direction(margin, answer):
    sft = cell("sft", BASE + noise(5, 0.05))
    rl = cell("sft+ppo", BASE + margin + noise(6, 0.05))  # per prompt: sft's difficulty, the margin, noise
    verdict = rl_vs_supervised({"sft": sft, "sft+ppo": rl})
    assert verdict["verdict"] == answer
    assert verdict["difference"]["estimate"] == pytest.approx(margin, abs=0.02)
    # Paired: the difficulty shared by both cells cancels, so the interval is far narrower than either cell's.
    assert verdict["difference"]["interval"]["width"] < 0.5 * stats.cell_interval(sft, "reward")[0].width


def test_perplexity_interval_is_the_token_weighted_one():
    c = cell("ppo", BASE, nll_per_token=3.0)
    nll, tokens = c.per_prompt.values["nll_sum"], c.per_prompt.values["tokens"]
    interval, why = stats.cell_interval(c, "perplexity")
    assert why == ""
    assert interval.estimate == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert interval.low < interval.estimate < interval.high
    assert stats.cell_interval(CellData("ppo", {"perplexity": 20.0}), "perplexity") == (None, "no per-prompt data")
    assert stats.cell_interval(c, "meteor") == (None, "no per-prompt values")


def test_seeds_are_resampled_so_their_spread_widens_the_interval():
    one = cell("ppo", BASE)
    apart = cell("ppo", [BASE - 0.1, BASE + 0.1])  # same mean, seeds 0.2 apart
    narrow, wide = stats.cell_interval(one, "reward")[0], stats.cell_interval(apart, "reward")[0]
    assert wide.estimate == pytest.approx(narrow.estimate)
    assert wide.width > 1.5 * narrow.width
    assert stats.seed_spread([0.4, 0.6]) == (pytest.approx(0.5), pytest.approx(math.sqrt(0.02)))
    assert stats.seed_spread([0.4]) == (0.4, None)


def test_cells_on_other_prompts_are_not_compared():
    a = cell("sft", BASE)
    shifted = PerPrompt(tuple(reversed(IDS)), a.per_prompt.values)
    b = CellData("ppo", a.means, shifted)
    comparison = stats.difference({"sft": a, "ppo": b}, "ppo", "sft")
    assert comparison.interval is None and "same prompts" in comparison.note
    with pytest.raises(ValueError, match="different prompts"):
        PerPrompt.from_seeds([{"ids": ["a", "b"], "reward": [1, 2]}, {"ids": ["b", "a"], "reward": [1, 2]}])


def test_finding_verdicts_follow_the_documented_rules():
    zero, sft = cell("zero-shot", BASE - 0.2, budget=None), cell("sft", BASE)
    up, down, same = BASE + 0.1 + noise(7, 0.02), BASE - 0.1 + noise(8, 0.02), BASE
    # (a): sft+X − sft; one clear gain and nothing against it is consistent, a gain and a loss inconclusive.
    cells = {"zero-shot": zero, "sft": sft, "sft+ppo": cell("sft+ppo", up), "sft+nlpo": cell("sft+nlpo", same)}
    assert stats.judge_task(cells, "a").verdict == "consistent"
    cells["sft+nlpo"] = cell("sft+nlpo", down)
    assert stats.judge_task(cells, "a").verdict == "inconclusive"
    assert stats.judge_task({"sft": sft, "sft+ppo": cell("sft+ppo", down)}, "a").verdict == "inconsistent"

    # (b) at equal wall-clock: NLPO's reward higher at equal perplexity is consistent; at a higher perplexity not.
    ppo = cell("ppo", BASE, iterations={0: 12})
    better = cell("nlpo", up, iterations={0: 5})
    assert stats.judge_task({"ppo": ppo, "nlpo": better}, "b_wallclock").verdict == "consistent"
    costly = cell("nlpo", up, nll_per_token=4.5, iterations={0: 5})
    assert stats.judge_task({"ppo": ppo, "nlpo": costly}, "b_wallclock").verdict == "inconsistent"
    assert stats.judge_task({"ppo": ppo, "nlpo": cell("nlpo", down)}, "b_wallclock").verdict == "inconsistent"
    unbudgeted = cell("nlpo", up, budget=None)
    judged = stats.judge_task({"ppo": ppo, "nlpo": unbudgeted}, "b_wallclock")
    assert judged.verdict == "n/a" and "one --budget" in judged.note
    # (b) at equal iterations: NLPO cut to 5 iterations is not compared; its equal-iterations twin is.
    judged = stats.judge_task({"ppo": ppo, "nlpo": better}, "b_iterations")
    assert judged.verdict == "n/a" and "--equal-iterations" in judged.note
    twin = cell("nlpo@ppo-iters", down, iterations={0: 12}, budget=None)
    judged = stats.judge_task({"ppo": ppo, "nlpo": better, "nlpo@ppo-iters": twin}, "b_iterations")
    assert judged.verdict == "inconsistent" and judged.comparisons[0].label == "nlpo@ppo-iters − ppo"

    # (c): (sft+X − sft) − (X − zero-shot) > 0: the RL step from the supervised model gained more.
    cells = {"zero-shot": zero, "sft": sft, "ppo": cell("ppo", BASE - 0.2 + 0.02), "sft+ppo": cell("sft+ppo", up)}
    judged = stats.judge_task(cells, "c")
    assert judged.verdict == "consistent"
    assert judged.comparisons[0].estimate == pytest.approx(0.1 - 0.02, abs=0.01)
    # (d): reward and perplexity moved together (consistent) or apart (inconsistent).
    rises = {"zero-shot": zero, "ppo": cell("ppo", BASE - 0.1, nll_per_token=4.0)}
    assert stats.judge_task(rises, "d").verdict == "consistent"
    falls = {"zero-shot": zero, "ppo": cell("ppo", BASE - 0.1, nll_per_token=3.0)}
    assert stats.judge_task(falls, "d").verdict == "inconsistent"
    assert stats.judge_task({"zero-shot": zero, "ppo": zero}, "d").verdict == "inconclusive"
    assert stats.judge_task({"sft": sft}, "d").verdict == "n/a"

    # Without per-prompt values nothing can be concluded.
    legacy = {a: CellData(a, c.means) for a, c in rises.items()}
    assert stats.judge_task(legacy, "d").verdict == "inconclusive"


def test_task_and_overall_verdicts_combine_as_documented():
    c, i, u, na = "consistent", "inconsistent", "inconclusive", "n/a"
    assert [stats.combine_task(v) for v in ([c, u], [i, u], [c, i], [u, u], [])] == [c, i, u, u, na]
    overall = stats.combine_overall([c, c, c, u, u, na])
    assert overall == {"verdict": c, "tasks": 5, c: 3, i: 0, u: 2}
    assert stats.combine_overall([c, c, u, u])["verdict"] == u  # half is not a majority
    assert stats.combine_overall([c, c, c, i])["verdict"] == u  # one task against it
    assert stats.combine_overall([i, i, u])["verdict"] == i
    assert stats.combine_overall([na, na])["verdict"] == na


def write_result(folder: Path, algo: str, rewards: np.ndarray, nll_per_token: float = 3.5, seed: int = 0) -> None:
    """A result file as a finished cell writes it."""
    nll = TOKENS * nll_per_token
    result = {
        "format": 2,
        "task": "imdb",
        "algo": algo,
        "seed": None if algo == "zero-shot" else seed,
        "iterations": 0 if algo == "zero-shot" else 10,
        "max_train_seconds": None if algo == "zero-shot" else 120.0,
        "train_seconds": 0.0 if algo == "zero-shot" else 118.0,
        "eval_seconds": 9.0,
        "num_prompts": N,
        "num_prompts_asked": N,
        "scores": {
            "reward": float(rewards.mean()),
            "perplexity": math.exp(nll.sum() / TOKENS.sum()),
            "distinct-2": 0.9,
        },
        "missing": {},
        "no_interval": {"distinct-2": "a corpus statistic, not the mean of its per-prompt values"},
        "per_prompt": {
            "ids": list(IDS),
            "reward": rewards.tolist(),
            "nll_sum": nll.tolist(),
            "tokens": TOKENS.tolist(),
        },
        "curve": [] if algo in ("zero-shot", "sft") else [[1, 0.4], [2, 0.5]],
        "bench": {"profile": "offline", "quick": False, "budget": 120.0, "overrides": []},
        "config": f"offline/imdb/{algo}.yaml",
        "config_hash": "synthetic",
    }
    name = f"imdb__{algo}" + (f"__seed{seed}" if seed else "")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")


def test_report_from_synthetic_result_files(tmp_path):
    results = tmp_path / "committed" / "cells"  # e.g. benchmarks/results/<name>/cells, without any run folder
    write_result(results, "zero-shot", BASE - 0.2)
    write_result(results, "sft", BASE + noise(9, 0.05))
    write_result(results, "ppo", BASE - 0.1 + noise(10, 0.05), nll_per_token=4.0)
    for seed in (0, 1):
        write_result(results, "sft+ppo", BASE + 0.1 + noise(11 + seed, 0.05), seed=seed)
    # A metric whose scoring failed in one seed: averaged over the other, and the table says so.
    seed1 = results / "imdb__sft+ppo__seed1.json"
    failed = json.loads(seed1.read_text(encoding="utf-8"))
    del failed["scores"]["distinct-2"]
    failed["missing"] = {"distinct": "failed: RuntimeError: broken"}
    seed1.write_text(json.dumps(failed), encoding="utf-8")
    out = tmp_path / "report"
    board = run_grue(out, report=True, results=results)
    assert list(board["tasks"]) == ["imdb"] and list(board["tasks"]["imdb"]) == ["zero-shot", "sft", "ppo", "sft+ppo"]
    verdict = board["rl_vs_supervised"]["imdb"]
    assert (verdict["verdict"], verdict["best_rl"]) == ("yes", "sft+ppo")
    entry = board["tasks"]["imdb"]["sft+ppo"]
    assert entry["seeds"] == [0, 1] and entry["std"]["reward"] > 0
    assert entry["intervals"]["reward"]["low"] < entry["scores"]["reward"] < entry["intervals"]["reward"]["high"]
    assert entry["no_interval"] == {"distinct-2": "a corpus statistic, not the mean of its per-prompt values"}
    assert board["cells_without_per_prompt_data"] == []
    assert board["findings"]["a"]["tasks"]["imdb"]["verdict"] == "consistent"
    assert board["findings"]["d"]["tasks"]["imdb"]["verdict"] == "consistent"  # ppo: reward and perplexity up
    assert board["findings"]["b_wallclock"]["tasks"]["imdb"]["verdict"] == "n/a"  # no NLPO cell
    markdown = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| imdb | yes | sft+ppo" in markdown
    assert "| sft+ppo | reward | " in markdown and "CI width" in markdown
    assert entry["partial_seeds"] == {"distinct-2": 1} and "partial_seeds" not in board["tasks"]["imdb"]["sft"]
    assert "| 0.900 (1 of 2 seeds) |" in markdown
    # The function the README quotes gives the table the leaderboard shows.
    table = findings_table(results)
    assert table in markdown and "| (a) RL from a supervised warm start" in table
    # The same files give the same leaderboard.
    assert run_grue(out, report=True, results=results) == board


def _floats_rounded(value: object) -> object:
    """The same structure with every float to 12 significant digits: a bootstrap's last bit moves with the
    numpy/scipy build that computed it, what it says does not."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _floats_rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats_rounded(v) for v in value]
    return value


def test_the_committed_leaderboard_is_what_report_makes_of_the_committed_result_files(tmp_path):
    # The README quotes benchmarks/results/grue-offline/leaderboard.md: it must come from the result files
    # beside it, not from an older run or a hand edit (rebuild it with `lmgym bench grue --report`).
    committed = Path(__file__).parents[2] / "benchmarks" / "results" / "grue-offline"
    board = run_grue(tmp_path, report=True, results=committed / "cells", console=Console(quiet=True))
    on_disk = json.loads((committed / "leaderboard.json").read_text(encoding="utf-8"))
    assert _floats_rounded(json.loads(json.dumps(board))) == _floats_rounded(on_disk)
    made = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    assert made == (committed / "leaderboard.md").read_text(encoding="utf-8")
