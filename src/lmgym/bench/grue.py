"""`lmgym bench grue`: the GRUE matrix of tasks × algorithms, a leaderboard and plots.

Each cell (task, algorithm) reads ``<configs>/<profile>/<task>/<algo>.yaml`` (a normal training
config), trains through `lmgym.api.train` and then scores its final model on the task's held-out
prompts with the task's metric set:

- ``zero-shot``: no training; the initial model is scored.
- ``sft``: supervised fine-tuning on the references (GRUE's "supervised" row).
- ``ppo`` / ``nlpo``: RL from the initial model.
- ``sft+ppo`` / ``sft+nlpo``: RL from the ``sft`` cell's final model (run first when missing); the
  KL penalty then anchors to the supervised model, as in GRUE's "supervised + RL" rows.

Every cell is scored the same way: generations for the first ``eval.num_prompts`` prompts of
``eval.split`` with the config's sampling settings and ``eval.seed``; ``reward`` is the task reward,
``perplexity`` that of the generations under the *original* model (GRUE's fluency check), and each
metric in the task's metric set is computed on the same generations from the metric registry. A
metric that cannot run here (e.g. SPICE without Java) is reported as missing, with the reason.

The matrix is resumable: a finished cell leaves ``cells/<task>__<algo>.json`` and is kept on the
next run; a cell whose training was interrupted continues from its newest checkpoint. Failed cells
are reported in the leaderboard and retried on the next run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lmgym.config import TrainConfig, load_config
from lmgym.errors import InputError, MissingFileError, StateError

log = logging.getLogger(__name__)

GRUE_TASKS = ("imdb", "commongen", "cnn_dailymail", "totto", "narrativeqa", "wmt16", "dailydialog")
EXTRA_TASKS = ("iwslt2017",)  # GRUE's other translation dataset; run it with --tasks
ALGOS = ("zero-shot", "sft", "ppo", "nlpo", "sft+ppo", "sft+nlpo")
RL_ALGOS = ("ppo", "nlpo", "sft+ppo", "sft+nlpo")
PROFILES = ("offline", "hub")

# --quick: every cell on the offline data with the tiny model, a few iterations, a handful of prompts.
QUICK_OVERRIDES = (
    "model=tiny",
    "iterations=2",
    "threads=1",
    "rollout.batch_size=4",
    "ppo.minibatch_size=4",
    "ppo.epochs=1",
    "nlpo.minibatch_size=4",
    "nlpo.epochs=1",
    "sft.batch_size=4",
    "generation.max_new_tokens=8",
    "eval.num_prompts=4",
    "eval.batch_size=4",
    "checkpoint.every=0",
    "task_args.source=offline",
    "task_args.n_train=16",
    "task_args.n_val=4",
    "task_args.n_test=4",
)

TRAINER_EVAL_PROMPTS = 8  # prompts of a trained cell's own before/after evaluation (not the bench's scores)
# Per task, a hook that adds what a metric needs to each sample's meta (module:function).
META_HOOKS = {"dailydialog": "lmgym.data.tasks.dailydialog:annotate_predicted_intent"}
# Names in a task's metric set that are not registry metrics: what the bench reports for them.
FROM_EVALUATION = {"perplexity": "perplexity", "sentiment": "reward"}


def default_configs_dir() -> Path:
    """``configs/grue`` of the source checkout this module runs from, else of the working directory."""
    here = Path(__file__).resolve().parents[3] / "configs" / "grue"
    return here if here.is_dir() else Path("configs") / "grue"


@dataclass(frozen=True)
class Cell:
    task: str
    algo: str

    @property
    def name(self) -> str:
        return f"{self.task}__{self.algo}"

    @property
    def warm_start(self) -> bool:
        return self.algo.startswith("sft+")


def parse_list(value: str | None, allowed: tuple[str, ...], default: tuple[str, ...], what: str) -> list[str]:
    if not value:
        return list(default)
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise InputError(f"--{what}: unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return items


class GrueBench:
    """Runs the matrix and writes ``leaderboard.md``, ``leaderboard.json`` and ``plots/`` under ``out``."""

    def __init__(
        self,
        out: str | Path,
        tasks: list[str],
        algos: list[str],
        profile: str = "offline",
        budget: float | None = None,
        quick: bool = False,
        overrides: list[str] | None = None,
        configs_dir: str | Path | None = None,
        console: Console | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise InputError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        if quick and profile != "offline":
            raise InputError("--quick runs the offline profile; drop --profile hub")
        if budget is not None and budget <= 0:
            raise InputError(f"--budget must be a positive number of seconds, got {budget}")
        self.out = Path(out)
        self.tasks, self.algos = tasks, sorted(algos, key=ALGOS.index)
        self.profile, self.budget, self.quick = profile, budget, quick
        self.overrides = list(overrides or [])
        self.configs_dir = Path(configs_dir) if configs_dir else default_configs_dir()
        self.console = console or Console()
        self.cells_dir, self.runs_dir = self.out / "cells", self.out / "runs"
        self._failed_now: set[Cell] = set()

    # --- configs -------------------------------------------------------------------------------

    def config_path(self, cell: Cell) -> Path:
        return self.configs_dir / self.profile / cell.task / f"{cell.algo}.yaml"

    def config(self, cell: Cell) -> TrainConfig:
        path = self.config_path(cell)
        if not path.exists():
            raise MissingFileError(f"no config for {cell.task} × {cell.algo}: {path} does not exist")
        overrides = [*(QUICK_OVERRIDES if self.quick else ()), *self.overrides]
        overrides += [f"run_dir={self.runs_dir}", f"name={cell.name}"]
        if self.budget is not None:
            overrides.append(f"max_train_seconds={self.budget}")
        return load_config(path, overrides)

    def config_hash(self, cell: Cell) -> str:
        """Fingerprint of a cell's resolved settings, stored with its result so that a rerun into the same
        folder never mixes results made with different settings. Settings left at their defaults are not part
        of it, so a new option in a later lmgym does not invalidate finished cells."""
        import hashlib

        settings = self.config(cell).model_dump(mode="json", exclude_defaults=True)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    # --- the matrix ----------------------------------------------------------------------------

    def cells(self) -> list[Cell]:
        return [Cell(t, a) for t in self.tasks for a in self.algos]

    def run(self) -> dict[str, Any]:
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for cell in self.cells():
            self.run_cell(cell)
        board = self.write_leaderboard()
        self.console.print(
            f"GRUE bench: {len(self.cells())} cells in {time.perf_counter() - started:.0f}s; "
            f"leaderboard in [bold]{self.out / 'leaderboard.md'}[/]"
        )
        return board

    def result_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.name}.json"

    def failure_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.name}.failed.json"

    def run_cell(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's result, from disk when it finished before; None when it failed (the error is saved)."""
        done = self.result_path(cell)
        if done.exists():
            kept = json.loads(done.read_text(encoding="utf-8"))
            if kept.get("config_hash") != self.config_hash(cell):
                raise InputError(
                    f"{self.out} holds a finished {cell.task} × {cell.algo} cell run with other settings (config, "
                    f"--quick, --budget or --set); use another --out, or delete {done} and "
                    f"{self.runs_dir / cell.name} to redo it"
                )
            self.console.print(f"[dim]{cell.name}: done earlier, kept[/]")
            return kept
        if cell in self._failed_now:  # e.g. the sft warm start of both sft+ppo and sft+nlpo: tried once per run
            return None
        self.console.rule(f"{cell.task} × {cell.algo}")
        self.failure_path(cell).unlink(missing_ok=True)
        try:
            result = self._run_cell(cell)
        except Exception as err:  # one broken cell must not stop the matrix; the leaderboard shows it
            log.debug("cell %s failed", cell.name, exc_info=True)
            message = f"{type(err).__name__}: {err}"
            self.console.print(f"[bold red]{cell.name} failed:[/] ", end="")
            self.console.print(message, highlight=False, markup=False)
            _write_json(self.failure_path(cell), {"error": message, "traceback": traceback.format_exc()})
            self._failed_now.add(cell)
            return None
        _write_json(done, result)
        return result

    def _run_cell(self, cell: Cell) -> dict[str, Any]:
        fingerprint = self.config_hash(cell)  # of the settings as read now, before the run could see edits
        config = self.config(cell)
        base_model = config.model.name
        train_seconds = 0.0
        if cell.algo == "zero-shot":
            model_path = base_model
        else:
            if cell.warm_start:
                sft = Cell(cell.task, "sft")
                if self.run_cell(sft) is None:
                    raise StateError(f"the warm start {sft.name} failed; see {self.failure_path(sft)}")
                config.model.name = str(self.runs_dir / sft.name / "final")
            from lmgym.api import train

            run = self.runs_dir / cell.name
            resume = (run / "config.yaml").exists()  # an interrupted cell continues from its checkpoint
            # The trainer's own before/after table needs only a glance; the bench scores the cell below on
            # eval.num_prompts prompts (scoring them three times per cell would double a CPU run's cost).
            scored_prompts = config.eval.num_prompts
            config.eval.num_prompts = min(scored_prompts, TRAINER_EVAL_PROMPTS)
            t0 = time.perf_counter()
            train(config, resume=resume, overwrite=not resume, console=self.console)
            train_seconds = time.perf_counter() - t0
            config.eval.num_prompts = scored_prompts
            model_path = str(run / "final")
            # Checkpoints only serve a cell interrupted mid-training; a trained one keeps final/ and its logs
            # (the matrix on the bundled model would otherwise hold ~40 GB of them).
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
        t0 = time.perf_counter()
        scores, notes, records = evaluate_cell(config, model_path, base_model)
        eval_seconds = time.perf_counter() - t0
        samples_path = self.cells_dir / f"{cell.name}.samples.jsonl"
        samples_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return {
            "task": cell.task,
            "algo": cell.algo,
            "model": config.model.name,
            "base_model": base_model,
            "iterations": self.trained_iterations(cell),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "num_prompts": len(records),
            "scores": scores,
            "missing": notes,
            "config": str(self.config_path(cell)),
            "config_hash": fingerprint,
        }

    # --- results -------------------------------------------------------------------------------

    def trained_iterations(self, cell: Cell) -> int:
        """Iterations (steps, for sft) the cell's training ran: fewer than configured when --budget cut it."""
        if cell.algo == "zero-shot":
            return 0
        from lmgym.tracking import RunDir

        done = [r["iteration"] for r in RunDir(self.runs_dir / cell.name).read_metrics() if r.get("kind") == "train"]
        return max(done, default=0)

    def collect(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{task: {algo: result or {"error": ...}}}`` for the cells of this matrix found on disk."""
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for cell in self.cells():
            row = table.setdefault(cell.task, {})
            if self.result_path(cell).exists():
                row[cell.algo] = json.loads(self.result_path(cell).read_text(encoding="utf-8"))
                row[cell.algo]["iterations"] = self.trained_iterations(cell)
            elif self.failure_path(cell).exists():
                row[cell.algo] = {"error": json.loads(self.failure_path(cell).read_text(encoding="utf-8"))["error"]}
            else:
                row[cell.algo] = {"error": "not run"}
        return table

    def write_leaderboard(self) -> dict[str, Any]:
        from lmgym.bench.grue_plots import plot_reward_curves, plot_reward_vs_perplexity

        table = self.collect()
        verdicts = {task: rl_vs_supervised(row) for task, row in table.items()}
        plots: dict[str, list[str]] = {}
        for task, row in table.items():
            runs = {a: self.runs_dir / Cell(task, a).name for a in row if a != "zero-shot"}
            made = [
                plot_reward_curves(task, runs, self.out / "plots" / f"{task}_reward_curves.png"),
                plot_reward_vs_perplexity(task, row, self.out / "plots" / f"{task}_reward_vs_perplexity.png"),
            ]
            plots[task] = [str(p.relative_to(self.out)) for p in made if p is not None]
        board = {
            "profile": self.profile,
            "quick": self.quick,
            "budget_seconds": self.budget,
            "overrides": self.overrides,
            "tasks": table,
            "rl_vs_supervised": verdicts,
            "plots": plots,
        }
        _write_json(self.out / "leaderboard.json", board)
        tmp = self.out / "leaderboard.md.tmp"
        tmp.write_text(leaderboard_markdown(board), encoding="utf-8")
        os.replace(tmp, self.out / "leaderboard.md")
        return board


def evaluate_cell(
    config: TrainConfig, model: str, base_model: str
) -> tuple[dict[str, float], dict[str, str], list[dict[str, Any]]]:
    """Scores of ``model`` on the config's held-out prompts: reward, perplexity under ``base_model``,
    distinct-n, length and the task's metric set; the reasons metrics are missing; one record per sample."""
    from lmgym.data.task import load_task
    from lmgym.evaluation import evaluate
    from lmgym.models.loading import load_model, set_truncation_side
    from lmgym.models.policy import Policy, ReferenceModel, make_generation_config

    task = load_task(config.task, **config.task_args)
    base = load_model(base_model, config.model.dtype, config.model.trust_remote_code)
    final = base if model == base_model else load_model(model, config.model.dtype, config.model.trust_remote_code)
    set_truncation_side(final.tokenizer, config.model.truncation_side, task.truncation_side)
    policy = Policy(final.model, final.tokenizer, final.is_seq2seq, value_head="none")
    reference = ReferenceModel(base.model, base.is_seq2seq)
    max_new = config.generation.max_new_tokens or int(task.generation.get("max_new_tokens", 32))
    generation = make_generation_config(final.tokenizer, **config.generation.hf_settings(max_new))
    samples = task.split(config.eval.split)[: config.eval.num_prompts]
    scores, records = evaluate(
        policy,
        reference,
        task.reward,
        samples,
        generation,
        config.model.max_prompt_tokens,
        config.eval.batch_size,
        config.eval.seed,
    )
    generations = [r["generation"] for r in records]
    task_scores, missing = task_metrics(task.name, task.metrics, samples, generations, scores)
    for record, sample in zip(records, samples, strict=True):
        record["references"] = list(sample.references)
    return {**scores, **task_scores}, missing, records


def task_metrics(
    task: str, names: tuple[str, ...], samples: list, generations: list[str], evaluated: dict[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Corpus scores of the task's metric set on ``generations``, and, for each metric that cannot run here
    or fails, the reason (reported in the leaderboard instead of a score)."""
    import importlib

    from lmgym.metrics.base import MissingRequirement, load_metric, metric_infos

    prompts = [s.prompt for s in samples]
    references = [list(s.references) for s in samples]
    meta = [dict(s.meta) for s in samples]
    if task in META_HOOKS:
        module, function = META_HOOKS[task].split(":")
        meta = getattr(importlib.import_module(module), function)(generations, meta)
    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    registered = metric_infos()
    for name in names:
        if name in FROM_EVALUATION:
            scores[name] = evaluated[FROM_EVALUATION[name]]
            continue
        if name not in registered:
            missing[name] = "not a registered metric (`lmgym metrics` lists them)"
            continue
        try:
            result = load_metric(name)(prompts, generations, references, meta)
        except MissingRequirement as err:
            missing[name] = str(err)
            continue
        except Exception as err:  # a broken metric costs its column, not the cell's other scores
            log.warning("metric %r failed on task %r: %s", name, task, err)
            missing[name] = f"failed: {type(err).__name__}: {err}"
            continue
        for key, value in result.items():
            scores[key] = float(value.corpus)
    return scores, missing


def rl_vs_supervised(row: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether the best RL cell's task reward beats the supervised (sft) cell's, per task."""

    def reward(algo: str) -> float | None:
        cell = row.get(algo, {})
        value = cell.get("scores", {}).get("reward")
        return None if value is None or not math.isfinite(float(value)) else float(value)

    rl = {a: reward(a) for a in RL_ALGOS if reward(a) is not None}
    sft = reward("sft")
    if not rl or sft is None:
        return {"verdict": "n/a", "why": "needs a finished sft cell and at least one finished RL cell"}
    best = max(rl, key=lambda a: rl[a])
    verdict = "yes" if rl[best] > sft else "tie" if rl[best] == sft else "no"
    return {"verdict": verdict, "best_rl": best, "best_rl_reward": rl[best], "sft_reward": sft}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def leaderboard_markdown(board: dict[str, Any]) -> str:
    lines = ["# GRUE leaderboard", ""]
    mode = "quick (tiny model, offline data)" if board["quick"] else f"profile {board['profile']}"
    budget = f", budget {board['budget_seconds']:g}s per trained cell" if board["budget_seconds"] else ""
    lines += [f"Mode: {mode}{budget}. Overrides: {' '.join(board['overrides']) or 'none'}.", ""]
    lines += ["| task | RL beats supervised? | best RL (reward) | sft (reward) |", "|---|---|---|---|"]
    for task, verdict in board["rl_vs_supervised"].items():
        if verdict["verdict"] == "n/a":
            lines.append(f"| {task} | n/a | | |")
        else:
            lines.append(
                f"| {task} | {verdict['verdict']} | {verdict['best_rl']} ({verdict['best_rl_reward']:.3f}) "
                f"| {verdict['sft_reward']:.3f} |"
            )
    lines.append("")
    lines += reward_matrix(board["tasks"])
    for task, row in board["tasks"].items():
        keys: list[str] = []
        for result in row.values():
            keys += [k for k in result.get("scores", {}) if k not in keys]
        head = ["reward", "perplexity"]
        keys = head + [k for k in keys if k not in head]
        lines += [f"## {task}", "", "| algo | " + " | ".join(keys) + " | iterations | train s |"]
        lines.append("|---" * (len(keys) + 3) + "|")
        for algo, result in row.items():
            if "error" in result:
                lines.append(f"| {algo} | failed: {result['error'][:150]} |" + " |" * (len(keys) + 1))
                continue
            values = [_fmt(result["scores"].get(k)) for k in keys]
            iterations = result.get("iterations", 0)
            lines.append(f"| {algo} | " + " | ".join(values) + f" | {iterations} | {result['train_seconds']:.0f} |")
        missing = sorted({f"{k}: {v}" for r in row.values() for k, v in r.get("missing", {}).items()})
        if missing:
            lines += ["", "Not computed here: " + "; ".join(m[:200] for m in missing)]
        for plot in board["plots"].get(task, []):
            lines += ["", f"![{Path(plot).stem}]({plot})"]
        lines.append("")
    return "\n".join(lines)


def reward_matrix(tasks: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines of the task reward (and perplexity) of every cell: tasks down, algorithms across, the best
    reward of each task in bold."""
    algos = [a for a in ALGOS if any(a in row for row in tasks.values())]
    lines = ["Task reward (perplexity under the original model) of every cell:", ""]
    lines += ["| task | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for task, row in tasks.items():
        rewards = {a: row[a]["scores"].get("reward") for a in algos if "scores" in row.get(a, {})}
        finite = [v for v in rewards.values() if v is not None and math.isfinite(v)]
        best = max(finite) if finite else None
        cells = []
        for algo in algos:
            if algo not in rewards:
                cells.append("failed" if "error" in row.get(algo, {}) and row[algo]["error"] != "not run" else "—")
                continue
            reward = _fmt(rewards[algo])
            cells.append(
                f"{'**' + reward + '**' if rewards[algo] == best else reward} "
                f"({_fmt(row[algo]['scores'].get('perplexity'))})"
            )
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a killed bench never leaves a half-written result that would count as done


def _finite(value: Any) -> Any:
    """NaN/inf → None (strict JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run_grue(
    out: str | Path = "runs/grue",
    tasks: str | None = None,
    algos: str | None = None,
    profile: str = "offline",
    budget: float | None = None,
    quick: bool = False,
    overrides: list[str] | None = None,
    configs_dir: str | Path | None = None,
    console: Console | None = None,
    report: bool = False,
) -> dict[str, Any]:
    """Run (or continue) the GRUE matrix; ``tasks``/``algos`` are comma-separated lists. ``report``: only
    rewrite the leaderboard and plots from the cells already in ``out`` (nothing is trained or scored)."""
    bench = GrueBench(
        out,
        parse_list(tasks, GRUE_TASKS + EXTRA_TASKS, GRUE_TASKS, "tasks"),
        parse_list(algos, ALGOS, ALGOS, "algos"),
        profile=profile,
        budget=budget,
        quick=quick,
        overrides=overrides,
        configs_dir=configs_dir,
        console=console,
    )
    if report:
        board = bench.write_leaderboard()
        bench.console.print(f"leaderboard of the finished cells in [bold]{bench.out / 'leaderboard.md'}[/]")
        return board
    return bench.run()
