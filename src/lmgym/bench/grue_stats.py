"""Statistics of the GRUE leaderboard: bootstrap intervals, paired comparisons and the verdicts built on them.

Everything here is computed from the per-prompt scores a finished cell stores (``per_prompt`` in its result
file). The cells of a task are scored on the same held-out prompts, so two cells can be compared prompt by prompt.

**A cell's value** of a metric is the mean over its seeds of the per-seed value. The per-seed value is the mean
of the per-prompt values, except for perplexity: exp(Σ NLL / Σ tokens) over that seed's generations (the
token-weighted corpus perplexity, from the stored per-prompt NLL sums and token counts).

**Intervals.** A 95% percentile bootstrap (`scipy.stats.bootstrap`, `RESAMPLES` resamples, its generator seeded
with `BOOTSTRAP_SEED`: the same files always give the same interval). Each resample draws the prompts with
replacement and, for a cell with two or more seeds, that cell's seeds with replacement too (independently of the
prompts and of the other cells' seeds), then recomputes the value. A metric without per-prompt values
(distinct-n, corpus BLEU, ...) or a cell written before per-prompt scores were stored gets its point value and
"no interval"; so do values that are not finite, cells scored on different prompts, and a statistic that is
undefined on some resample (a perplexity over prompts without tokens).

**Comparisons** are weighted sums of cells of one task, Σ w·value (A − B: weights +1 and −1). Their interval is
the same bootstrap with *one* draw of prompts shared by all the cells (paired: each resample compares the cells
on the same prompts). A comparison's sign is +1 when its interval lies above 0 (low > 0), −1 when it lies below
(high < 0), and 0 ("within noise") when it contains 0. Each interval is a 95% interval on its own: there is no
correction for the number of comparisons (the overall verdicts' majority rule is the guard against one lucky
task).

**RL beats supervised?** (per task): the RL cell (ppo, nlpo, sft+ppo, sft+nlpo) with the highest mean task
reward, minus ``sft``, on the task reward: ``yes`` (sign +1), ``no`` (−1), ``within noise`` (0), ``no interval``
(a cell lacks per-prompt data). The best cell is picked by its mean before it is tested, which favours ``yes``
a little; every RL cell's own comparison with ``sft`` is listed too.

**GRUE's findings** — each comparison below gets a verdict, a task combines its comparisons, ``overall`` the tasks:

- (a) *RL from a supervised warm start beats supervised alone*: reward(sft+X) − reward(sft) for X = ppo, nlpo.
  consistent: sign +1; inconsistent: −1; inconclusive: 0 or no interval.
- (b) *NLPO beats PPO on the task reward at similar fluency*: for (P, N) = (ppo, nlpo) and (sft+ppo, sft+nlpo),
  Δreward = reward(N) − reward(P) and Δppl = perplexity(N) − perplexity(P). consistent: Δreward's sign +1 and
  Δppl's −1 or 0 (NLPO's perplexity not significantly higher); inconsistent: Δreward −1, or Δreward +1 with
  Δppl +1 (the reward came at a fluency cost); inconclusive otherwise (Δreward 0, or either has no interval).
  Judged twice:
  *equal wall-clock*: the two cells were trained under the same ``max_train_seconds`` (``--budget``), else n/a;
  *equal iterations*: N is the budget cell when each seed trained as many iterations as P's, else
  ``N@ppo-iters`` (trained by ``--equal-iterations`` for P's iteration count, without a time cap) when its
  iterations match P's, else n/a.
- (c) *RL on its own moves the task reward less than supervised + RL*: the difference of the two RL steps'
  gains, (reward(sft+X) − reward(sft)) − (reward(X) − reward(zero-shot)) for X = ppo, nlpo. consistent: +1;
  inconsistent: −1; inconclusive: 0 or no interval.
- (d) *Perplexity rises with reward*: each RL cell against the model it started from (X against zero-shot,
  sft+X against sft): Δreward and Δppl. consistent: both signs non-zero and equal (they moved together);
  inconsistent: both non-zero and opposite; inconclusive otherwise.

A **task**'s verdict on a finding: consistent if at least one of its comparisons is consistent and none is
inconsistent; inconsistent if at least one is inconsistent and none is consistent; inconclusive if all are
inconclusive or they disagree; n/a when none could be made (cells missing). **Overall**, over the tasks whose
verdict is not n/a: consistent if more than half of them are consistent and none is inconsistent; inconsistent
if more than half are inconsistent and none is consistent; inconclusive otherwise; n/a when no task has one.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmgym.errors import InputError

CONFIDENCE = 0.95
RESAMPLES = 9999
BOOTSTRAP_SEED = 0
METHOD = "percentile"
PERPLEXITY = "perplexity"
NLL_KEYS = ("nll_sum", "tokens")  # per-prompt pieces of the corpus perplexity
REWARD = "reward"
RL_ALGOS = ("ppo", "nlpo", "sft+ppo", "sft+nlpo")
EQUAL_ITERS = "@ppo-iters"  # suffix of an NLPO cell trained for the matching PPO cell's iteration count
NLPO_VS_PPO = (("ppo", "nlpo"), ("sft+ppo", "sft+nlpo"))
CONSISTENT, INCONSISTENT, INCONCLUSIVE, NA = "consistent", "inconsistent", "inconclusive", "n/a"
FINDINGS = {
    "a": "(a) RL from a supervised warm start beats supervised alone (task reward)",
    "b_iterations": "(b) NLPO beats PPO on the task reward at similar perplexity — equal iterations",
    "b_wallclock": "(b) NLPO beats PPO on the task reward at similar perplexity — equal wall-clock (budget)",
    "c": "(c) RL on its own moves the task reward less than supervised + RL",
    "d": "(d) Perplexity rises with reward (RL cell against its starting model)",
}


# --- per-prompt data and the bootstrap ---------------------------------------------------------------------


@dataclass(frozen=True)
class PerPrompt:
    """Per-prompt values of one task × algorithm over its seeds: ``values[key]`` is a [seeds, prompts] array."""

    ids: tuple[str, ...]
    values: Mapping[str, np.ndarray]

    @classmethod
    def from_seeds(cls, seeds: Sequence[Mapping[str, Any]]) -> PerPrompt:
        """From the ``per_prompt`` dicts of a cell's seeds (``ids`` and one list per key). Only the keys every
        seed has are kept; seeds scored on other prompts are an error (their values cannot be averaged)."""
        if not seeds:
            raise InputError("no seeds to build per-prompt values from")
        ids = tuple(str(i) for i in seeds[0]["ids"])
        for seed in seeds[1:]:
            if tuple(str(i) for i in seed["ids"]) != ids:
                raise InputError("the seeds of a cell were scored on different prompts")
        keys = [k for k in seeds[0] if k != "ids" and all(k in s for s in seeds)]
        values = {}
        for key in keys:
            array = np.array([s[key] for s in seeds], dtype=float)
            if array.shape != (len(seeds), len(ids)):
                raise InputError(f"per-prompt {key!r}: {array.shape[-1]} values for {len(ids)} prompts")
            values[key] = array
        return cls(ids, values)

    @property
    def seeds(self) -> int:
        return next(iter(self.values.values())).shape[0] if self.values else 0

    def supports(self, metric: str) -> bool:
        keys = NLL_KEYS if metric == PERPLEXITY else (metric,)
        return bool(self.ids) and all(k in self.values for k in keys)


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on all prompts and seeds
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def sign(self) -> int:
        """+1: the interval lies above 0; −1: below; 0: it contains 0."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def to_json(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "width": self.width}


def _per_seed(metric: str, data: PerPrompt, counts: np.ndarray) -> np.ndarray:
    """The metric of each seed on each resample of the prompts, given as how often it drew each prompt
    (``counts``, [B, prompts]): an array [seeds, B]."""
    # einsum rather than a BLAS matmul: these products are small, and BLAS threads only contend on a busy CPU
    if metric == PERPLEXITY:
        nll = np.einsum("bn,sn->sb", counts, data.values["nll_sum"])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.exp(nll / np.einsum("bn,sn->sb", counts, data.values["tokens"]))
    return np.einsum("bn,sn->sb", counts, data.values[metric]) / counts.sum(1)


def _counts(prompts: np.ndarray, n: int) -> np.ndarray:
    """[B, n] draws of prompt indices → [B, n] how often each prompt was drawn (sums over draws become products)."""
    rows = prompts.shape[0]
    flat = (prompts + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _check_paired(terms: Sequence[tuple[float, PerPrompt]], metric: str) -> None:
    ids = terms[0][1].ids
    for _, data in terms:
        if data.ids != ids:
            raise InputError("cells compared prompt by prompt must be scored on the same prompts")
        if not data.supports(metric):
            raise InputError(f"no per-prompt values of {metric!r}")


_CACHE: dict[tuple[Any, ...], Interval] = {}  # the leaderboard asks for the same comparison several times
_CACHE_SIZE = 4096


def _digest(data: PerPrompt, metric: str) -> str:
    """A key of the values a metric's bootstrap reads (content, not identity: equal data, equal interval)."""
    digest = hashlib.blake2b("\x1f".join(data.ids).encode(), digest_size=16)
    for key in NLL_KEYS if metric == PERPLEXITY else (metric,):
        digest.update(key.encode() + np.ascontiguousarray(data.values[key]).tobytes())
    return digest.hexdigest()


def bootstrap(
    terms: Sequence[tuple[float, PerPrompt]],
    metric: str,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Interval of Σ w·value(cell) over ``terms`` = [(w, cell), ...]: one cell gives its own interval, two with
    weights +1/−1 a paired difference. Prompts are drawn once per resample for all cells; each cell with several
    seeds has its seeds drawn too."""
    _check_paired(terms, metric)
    key = (metric, confidence, resamples, seed, tuple((float(w), _digest(d, metric)) for w, d in terms))
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = _bootstrap(terms, metric, confidence, resamples, seed)
    return _CACHE[key]


def _bootstrap(
    terms: Sequence[tuple[float, PerPrompt]], metric: str, confidence: float, resamples: int, seed: int
) -> Interval:
    from scipy.stats import bootstrap as scipy_bootstrap

    seeded = [k for k, (_, data) in enumerate(terms) if data.seeds >= 2]
    n_prompts = len(terms[0][1].ids)
    samples = [np.arange(terms[k][1].seeds) for k in seeded] + [np.arange(n_prompts)]

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        *seed_draws, prompts = (np.atleast_2d(i) for i in indices)
        draws = dict(zip(seeded, seed_draws, strict=True))
        counts = _counts(prompts, n_prompts)  # one draw of prompts for every cell: the pairing
        total = np.zeros(prompts.shape[0])
        for k, (weight, data) in enumerate(terms):
            per_seed = _per_seed(metric, data, counts)  # [seeds, B]
            # the mean over the seeds drawn for each resample (over all of them when the cell has one)
            total += weight * (
                np.take_along_axis(per_seed.T, draws[k], axis=1).mean(1) if k in draws else per_seed.mean(0)
            )
        return total if indices[-1].ndim > 1 else total[0]

    estimate = float(statistic(*samples))
    if not math.isfinite(estimate):
        raise InputError(f"per-prompt values of {metric!r} are not all finite")
    kwargs: dict[str, Any] = {
        "n_resamples": resamples,
        "batch": 2000,  # bounds memory: [batch, prompts] counts per call
        "vectorized": True,
        "paired": False,  # the samples are index sets (seeds, prompts); pairing comes from the shared prompts
        "confidence_level": confidence,
        "method": METHOD,
    }
    generator = np.random.default_rng(seed)
    with warnings.catch_warnings():  # a NaN resample warns of BCa; it is reported below as no interval
        warnings.simplefilter("ignore", RuntimeWarning)
        # scipy < 1.15 names the generator random_state
        name = "rng" if "rng" in inspect.signature(scipy_bootstrap).parameters else "random_state"
        result = scipy_bootstrap(tuple(samples), statistic, **{name: generator}, **kwargs)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # e.g. a resample of prompts without generated tokens
        raise InputError(f"the bootstrap of {metric!r} is undefined on some resamples")
    return Interval(estimate, low, high)


# --- cells, comparisons and verdicts -----------------------------------------------------------------------


@dataclass(frozen=True)
class CellData:
    """What the verdicts need of one task × algorithm: the means over its seeds, its per-prompt values (None
    when its result files hold none), the iterations each seed trained and its wall-clock budget."""

    algo: str
    means: Mapping[str, float]
    per_prompt: PerPrompt | None = None
    iterations: Mapping[int, int] = field(default_factory=dict)
    budget: float | None = None
    why_no_data: str = "no per-prompt data"


@dataclass(frozen=True)
class Comparison:
    terms: tuple[tuple[float, str], ...]  # (weight, algo)
    metric: str
    estimate: float | None
    interval: Interval | None
    note: str = ""

    @property
    def sign(self) -> int | None:
        return None if self.interval is None else self.interval.sign

    @property
    def label(self) -> str:
        parts = []
        for weight, algo in self.terms:
            sign = "+" if weight > 0 else "−"
            parts.append(f"{sign} {algo}" if parts or weight < 0 else algo)
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "comparison": self.label,
            "metric": self.metric,
            "estimate": self.estimate,
            "interval": None if self.interval is None else self.interval.to_json(),
            "sign": self.sign,
            "note": self.note,
        }


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def compare(cells: Mapping[str, CellData], terms: Sequence[tuple[float, str]], metric: str) -> Comparison | None:
    """Σ w·metric over the cells named in ``terms``; None when one of them is missing. Without per-prompt values
    of every cell, the point estimate only (``interval`` None, the reason in ``note``)."""
    if any(algo not in cells for _, algo in terms):
        return None
    points = [_finite(cells[algo].means.get(metric)) for _, algo in terms]
    estimate = None if None in points else sum(w * p for (w, _), p in zip(terms, points, strict=True))
    lacking = [algo for _, algo in terms if cells[algo].per_prompt is None]
    if lacking:
        why = "; ".join(sorted({cells[a].why_no_data for a in lacking}))
        return Comparison(tuple(terms), metric, estimate, None, f"{', '.join(lacking)}: {why}")
    data = [(w, cells[algo].per_prompt) for w, algo in terms]
    try:
        interval = bootstrap(data, metric)  # type: ignore[arg-type]
    except InputError as err:
        return Comparison(tuple(terms), metric, estimate, None, str(err))
    return Comparison(tuple(terms), metric, estimate, interval)


def difference(cells: Mapping[str, CellData], a: str, b: str, metric: str = REWARD) -> Comparison | None:
    return compare(cells, ((1.0, a), (-1.0, b)), metric)


def cell_interval(cell: CellData, metric: str) -> tuple[Interval | None, str]:
    """The cell's interval of ``metric``, or None and why there is none."""
    if cell.per_prompt is None:
        return None, cell.why_no_data
    if not cell.per_prompt.supports(metric):
        return None, "no per-prompt values"
    try:
        return bootstrap([(1.0, cell.per_prompt)], metric), ""
    except InputError as err:
        return None, str(err)


BEATS = {1: "yes", -1: "no", 0: "within noise", None: "no interval"}


def rl_vs_supervised(cells: Mapping[str, CellData]) -> dict[str, Any]:
    """Whether the best RL cell (by mean task reward) beats ``sft`` on the task reward (paired bootstrap)."""
    rewards = {a: r for a in RL_ALGOS if a in cells and (r := _finite(cells[a].means.get(REWARD))) is not None}
    if not rewards or "sft" not in cells or _finite(cells["sft"].means.get(REWARD)) is None:
        return {"verdict": NA, "why": "needs a finished sft cell and at least one finished RL cell"}
    best = max(rewards, key=lambda a: rewards[a])
    result = difference(cells, best, "sft")
    assert result is not None  # both cells exist
    return {
        "verdict": BEATS[result.sign],
        "best_rl": best,
        "best_rl_reward": rewards[best],
        "sft_reward": float(cells["sft"].means[REWARD]),
        "difference": result.to_json(),
    }


def pairwise(cells: Mapping[str, CellData]) -> list[Comparison]:
    """The two-cell task-reward comparisons of a task: each RL cell − sft, NLPO − PPO, sft+RL − RL alone."""
    pairs = [(a, "sft") for a in RL_ALGOS]
    pairs += [(n, p) for p, n in NLPO_VS_PPO]
    pairs += [(n + EQUAL_ITERS, p) for p, n in NLPO_VS_PPO]
    pairs += [("sft+ppo", "ppo"), ("sft+nlpo", "nlpo")]
    return [c for a, b in pairs if (c := difference(cells, a, b)) is not None]


def _by_sign(comparison: Comparison) -> str:
    return {1: CONSISTENT, -1: INCONSISTENT}.get(comparison.sign, INCONCLUSIVE)  # type: ignore[arg-type]


def _nlpo_beats_ppo(reward: Comparison, perplexity: Comparison | None) -> str:
    if reward.sign == -1:
        return INCONSISTENT
    if reward.sign != 1 or perplexity is None or perplexity.sign is None:
        return INCONCLUSIVE
    return INCONSISTENT if perplexity.sign == 1 else CONSISTENT


def _moves_together(reward: Comparison, perplexity: Comparison | None) -> str:
    signs = (reward.sign, None if perplexity is None else perplexity.sign)
    if None in signs or 0 in signs:
        return INCONCLUSIVE
    return CONSISTENT if signs[0] == signs[1] else INCONSISTENT


@dataclass
class Judged:
    verdict: str
    comparisons: list[Comparison]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "note": self.note, "comparisons": [c.to_json() for c in self.comparisons]}


def _same_iterations(a: CellData, b: CellData) -> bool:
    return bool(a.iterations) and dict(a.iterations) == dict(b.iterations)


def _nlpo_partner(cells: Mapping[str, CellData], ppo: str, nlpo: str, mode: str) -> tuple[str | None, str]:
    """The NLPO cell to set against ``ppo`` at equal iterations or equal wall-clock, or None and why not."""
    if ppo not in cells:
        return None, f"{ppo} not run"
    if mode == "wallclock":
        if nlpo not in cells:
            return None, f"{nlpo} not run"
        budgets = (cells[ppo].budget, cells[nlpo].budget)
        if budgets[0] is None or budgets[0] != budgets[1]:
            return None, f"{ppo} and {nlpo} were not trained under one --budget"
        return nlpo, ""
    variant = nlpo + EQUAL_ITERS
    if nlpo not in cells and variant not in cells:
        return None, f"{nlpo} not run"
    if nlpo in cells and _same_iterations(cells[ppo], cells[nlpo]):
        return nlpo, ""
    if variant in cells and _same_iterations(cells[ppo], cells[variant]):
        return variant, ""
    return None, f"{nlpo} trained other iteration counts than {ppo}: rerun with --equal-iterations"


def judge_task(cells: Mapping[str, CellData], finding: str) -> Judged:
    """One task's verdict on one finding (see the module docstring for the rules)."""
    verdicts: list[str] = []
    shown: list[Comparison] = []
    notes: list[str] = []
    if finding == "a":
        for rl in ("sft+ppo", "sft+nlpo"):
            if (c := difference(cells, rl, "sft")) is not None:
                verdicts.append(_by_sign(c))
                shown.append(c)
    elif finding in ("b_iterations", "b_wallclock"):
        for ppo, nlpo in NLPO_VS_PPO:
            partner, why = _nlpo_partner(cells, ppo, nlpo, finding.removeprefix("b_"))
            if partner is None:
                notes.append(why)
                continue
            reward = difference(cells, partner, ppo)
            assert reward is not None
            perplexity = difference(cells, partner, ppo, PERPLEXITY)
            verdicts.append(_nlpo_beats_ppo(reward, perplexity))
            shown += [c for c in (reward, perplexity) if c is not None]
    elif finding == "c":
        for rl in ("ppo", "nlpo"):
            terms = ((1.0, f"sft+{rl}"), (-1.0, "sft"), (-1.0, rl), (1.0, "zero-shot"))
            if (c := compare(cells, terms, REWARD)) is not None:
                verdicts.append(_by_sign(c))
                shown.append(c)
    elif finding == "d":
        for rl in RL_ALGOS:
            start = "sft" if rl.startswith("sft+") else "zero-shot"
            if (reward := difference(cells, rl, start)) is None:
                continue
            perplexity = difference(cells, rl, start, PERPLEXITY)
            verdicts.append(_moves_together(reward, perplexity))
            shown += [c for c in (reward, perplexity) if c is not None]
    else:
        raise InputError(f"unknown finding {finding!r}; choose from {', '.join(FINDINGS)}")
    return Judged(combine_task(verdicts), shown, "; ".join(notes))


def combine_task(verdicts: Sequence[str]) -> str:
    """A task's verdict from its comparisons' verdicts."""
    if not verdicts:
        return NA
    consistent, inconsistent = verdicts.count(CONSISTENT), verdicts.count(INCONSISTENT)
    if consistent and not inconsistent:
        return CONSISTENT
    if inconsistent and not consistent:
        return INCONSISTENT
    return INCONCLUSIVE


def combine_overall(verdicts: Sequence[str]) -> dict[str, Any]:
    """The overall verdict from the tasks' verdicts, with the counts it rests on."""
    judged = [v for v in verdicts if v != NA]
    counts = {v: judged.count(v) for v in (CONSISTENT, INCONSISTENT, INCONCLUSIVE)}
    if not judged:
        verdict = NA
    elif counts[CONSISTENT] > len(judged) / 2 and not counts[INCONSISTENT]:
        verdict = CONSISTENT
    elif counts[INCONSISTENT] > len(judged) / 2 and not counts[CONSISTENT]:
        verdict = INCONSISTENT
    else:
        verdict = INCONCLUSIVE
    return {"verdict": verdict, "tasks": len(judged), **counts}


def findings(tasks: Mapping[str, Mapping[str, CellData]]) -> dict[str, Any]:
    """Every finding of GRUE against these cells, as JSON: ``{finding: {"claim", "tasks": {task: {"verdict",
    "note", "comparisons"}}, "overall": {"verdict", "tasks", "consistent", "inconsistent", "inconclusive"}}}``."""
    out: dict[str, Any] = {}
    for key, claim in FINDINGS.items():
        per_task = {task: judge_task(cells, key) for task, cells in tasks.items()}
        out[key] = {
            "claim": claim,
            "tasks": {task: judged.to_json() for task, judged in per_task.items()},
            "overall": combine_overall([j.verdict for j in per_task.values()]),
        }
    return out


def findings_markdown(found: Mapping[str, Any]) -> str:
    """The findings table (from `findings`): one row per finding, a column per task and the overall verdict with
    its counts (consistent/inconsistent/inconclusive of the tasks judged)."""
    tasks = list(next(iter(found.values()))["tasks"]) if found else []
    lines = ["| finding | " + " | ".join(tasks) + " | overall |", "|---" * (len(tasks) + 2) + "|"]
    for row in found.values():
        verdicts = [row["tasks"][t]["verdict"] for t in tasks]
        o = row["overall"]
        overall = o["verdict"] + (
            f" ({o[CONSISTENT]}/{o[INCONSISTENT]}/{o[INCONCLUSIVE]} of {o['tasks']})" if o["tasks"] else ""
        )
        lines.append(f"| {row['claim']} | " + " | ".join(verdicts) + f" | {overall} |")
    return "\n".join(lines) + "\n"


def seed_spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds (std None with fewer than two finite values)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) >= 2 else None)
