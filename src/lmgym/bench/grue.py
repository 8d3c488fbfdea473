"""`lmgym bench grue`: the GRUE matrix of tasks × algorithms × seeds, a leaderboard with intervals, and plots.

Each cell (task, algorithm, seed) reads ``<configs>/<profile>/<task>/<algo>.yaml`` (a normal training config),
trains through `lmgym.api.train` with the config's ``seed`` set to the cell's seed and then scores its final
model on the task's held-out prompts with the task's metric set:

- ``zero-shot``: no training; the initial model is scored (one cell, no seeds).
- ``sft``: supervised fine-tuning on the references (GRUE's "supervised" row).
- ``ppo`` / ``nlpo``: RL from the initial model.
- ``sft+ppo`` / ``sft+nlpo``: RL from the final model of the ``sft`` cell of the same seed (run first when
  missing); the KL penalty then anchors to the supervised model, as in GRUE's "supervised + RL" rows.
- with ``--equal-iterations``, ``nlpo@ppo-iters`` / ``sft+nlpo@ppo-iters``: NLPO trained for exactly as many
  iterations as the matching PPO cell of the same seed ran, without the ``--budget`` time cap, so that NLPO and
  PPO are compared both at equal wall-clock (the budget cells) and at equal iterations (as GRUE does).

``--seeds N`` trains every trained cell with seeds 0..N−1. Every cell is scored the same way: generations for
the first ``eval.num_prompts`` prompts of ``eval.split`` with the config's sampling settings and ``eval.seed``;
``reward`` is the task reward, ``perplexity`` that of the generations under the *original* model (GRUE's
fluency check), and each metric in the task's metric set is computed on the same generations from the metric
registry. A metric that cannot run here (e.g. SPICE without Java) is reported as missing, with the reason.

Each finished cell writes a small result file, ``<results>/<task>__<algo>[__seed<s>].json`` (``--results``,
default ``<out>/cells``; seed 0 has no suffix): its scores, the per-prompt values the bootstrap needs (rewards,
per-sample metrics, NLL sums and token counts), the training reward per iteration, iterations, seconds, the
config fingerprint, the seed and the lmgym version and commit. Never model weights: the files can be committed
and the matrix completed over several sessions. A kept result is reused on the next run when its fingerprint
matches (other settings are refused); training state lives in ``<out>/runs`` (an interrupted cell continues
from its newest checkpoint) and generations in ``<out>/samples``. ``--report`` rebuilds the leaderboard and the
plots from the result files alone. Failed cells are reported and retried on the next run.

The statistics (intervals, paired comparisons, the "RL beats supervised?" answer and the verdicts on GRUE's
findings) and their exact decision rules are in `lmgym.bench.grue_stats`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from lmgym.bench import grue_stats as stats
from lmgym.bench.grue_stats import rl_vs_supervised
from lmgym.config import TrainConfig, load_config
from lmgym.data.task import Task
from lmgym.errors import InputError, MissingFileError, StateError

log = logging.getLogger(__name__)

GRUE_TASKS = ("imdb", "commongen", "cnn_dailymail", "totto", "narrativeqa", "wmt16", "dailydialog")
EXTRA_TASKS = ("iwslt2017",)  # GRUE's other translation dataset; run it with --tasks
ALGOS = ("zero-shot", "sft", "ppo", "nlpo", "sft+ppo", "sft+nlpo")
RL_ALGOS = stats.RL_ALGOS
PROFILES = ("offline", "hub")
EQUAL_ITERS = stats.EQUAL_ITERS
PPO_OF = {"nlpo": "ppo", "sft+nlpo": "sft+ppo"}  # an NLPO algorithm → the PPO one whose iterations it gets
VARIANTS = tuple(nlpo + EQUAL_ITERS for nlpo in PPO_OF)
ORDER = ("zero-shot", "sft", "ppo", "nlpo", "nlpo" + EQUAL_ITERS, "sft+ppo", "sft+nlpo", "sft+nlpo" + EQUAL_ITERS)
FORMAT = 2  # of a result file: 2 adds seeds and per-prompt values (1: the first runner's, without either)

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
# Names in a task's metric set that are not registry metrics: what the bench reports for them.
FROM_EVALUATION = {"perplexity": "perplexity", "sentiment": "reward"}
# Settings that name a cell rather than change it: left out of its fingerprint, so that a result file stays
# valid when the matrix moves to another folder or machine (the seed is in the file's name).
UNFINGERPRINTED = ("seed", "name", "run_dir")
NO_PER_PROMPT = "no per-prompt data (written before per-prompt scores were stored)"
PER_PROMPT_DIGITS = 7  # significant digits of the stored per-prompt values (far below the prompts' noise)


def default_configs_dir() -> Path:
    """``configs/grue`` of the source checkout this module runs from, else of the working directory."""
    here = Path(__file__).resolve().parents[3] / "configs" / "grue"
    return here if here.is_dir() else Path("configs") / "grue"


@dataclass(frozen=True)
class Cell:
    task: str
    algo: str  # one of ALGOS or VARIANTS
    seed: int | None = 0  # None: zero-shot, which has no seeds

    @property
    def name(self) -> str:
        base = f"{self.task}__{self.algo}"
        return base if not self.seed else f"{base}__seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.task} × {self.algo}" + ("" if self.seed is None else f" (seed {self.seed})")

    @property
    def base_algo(self) -> str:
        return self.algo.removesuffix(EQUAL_ITERS)

    @property
    def warm_start(self) -> bool:
        return self.algo.startswith("sft+")

    @property
    def equal_iterations(self) -> bool:
        return self.algo.endswith(EQUAL_ITERS)


def parse_cell_name(name: str) -> Cell | None:
    """The cell a result file's name (without ``.json``) belongs to; None for other files."""
    parts = name.split("__")
    if len(parts) == 3 and re.fullmatch(r"seed\d+", parts[2]):
        seed: int | None = int(parts[2][4:])
    elif len(parts) == 2:
        seed = None if parts[1] == "zero-shot" else 0
    else:
        return None
    task, algo = parts[0], parts[1]
    if task not in GRUE_TASKS + EXTRA_TASKS or algo not in ALGOS + VARIANTS:
        return None
    return Cell(task, algo, seed)


def parse_list(value: str | None, allowed: tuple[str, ...], default: tuple[str, ...], what: str) -> list[str]:
    if not value:
        return list(default)
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise InputError(f"--{what}: unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return items


@dataclass
class Found:
    """The result files of one task × algorithm: one result per finished seed, the errors of failed seeds."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[int | None, str] = field(default_factory=dict)


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
        seeds: int = 1,
        results: str | Path | None = None,
        equal_iterations: bool = False,
    ) -> None:
        if profile not in PROFILES:
            raise InputError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        if quick and profile != "offline":
            raise InputError("--quick runs the offline profile; drop --profile hub")
        if budget is not None and budget <= 0:
            raise InputError(f"--budget must be a positive number of seconds, got {budget}")
        if seeds < 1:
            raise InputError(f"--seeds must be at least 1, got {seeds}")
        self.out = Path(out)
        self.tasks, self.algos = tasks, sorted(algos, key=ALGOS.index)
        self.profile, self.budget, self.quick = profile, budget, quick
        self.seeds, self.equal_iterations = seeds, equal_iterations
        self.overrides = list(overrides or [])
        self.configs_dir = Path(configs_dir) if configs_dir else default_configs_dir()
        self.console = console or Console()
        self.cells_dir = Path(results) if results else self.out / "cells"
        self.runs_dir, self.samples_dir = self.out / "runs", self.out / "samples"
        self._failed_now: set[Cell] = set()
        self.legacy_used: dict[tuple[str, str], dict[str, Any]] = {}  # old-format cells the last collect() used

    @property
    def settings(self) -> dict[str, Any]:
        """The bench options a result was made with (stored in it; the leaderboard's header)."""
        return {"profile": self.profile, "quick": self.quick, "budget": self.budget, "overrides": self.overrides}

    # --- configs -------------------------------------------------------------------------------

    def config_path(self, cell: Cell) -> Path:
        return self.configs_dir / self.profile / cell.task / f"{cell.base_algo}.yaml"

    def config(self, cell: Cell) -> TrainConfig:
        path = self.config_path(cell)
        if not path.exists():
            raise MissingFileError(f"no config for {cell.task} × {cell.base_algo}: {path} does not exist")
        overrides = [*(QUICK_OVERRIDES if self.quick else ()), *self.overrides]
        overrides += [f"run_dir={self.runs_dir}", f"name={cell.name}"]
        if cell.seed is not None:
            overrides.append(f"seed={cell.seed}")
        if cell.equal_iterations:  # as many iterations as the PPO cell ran, however long they take
            overrides.append(f"iterations={self.ppo_iterations(cell)}")
        elif self.budget is not None:
            overrides.append(f"max_train_seconds={self.budget}")
        return load_config(path, overrides)

    def config_hash(self, cell: Cell) -> str:
        """Fingerprint of a cell's resolved settings, stored with its result so that a rerun into the same
        folder never mixes results made with different settings. Settings left at their defaults are not part
        of it, so a new option in a later lmgym does not invalidate finished cells; nor are the seed, name and
        folder (`UNFINGERPRINTED`), so the seeds of a cell share it and a result folder can move."""
        import hashlib

        settings = self.config(cell).model_dump(mode="json", exclude_defaults=True)
        for key in UNFINGERPRINTED:
            settings.pop(key, None)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def ppo_cell(self, cell: Cell) -> Cell:
        return Cell(cell.task, PPO_OF[cell.base_algo], cell.seed)

    def ppo_iterations(self, cell: Cell) -> int:
        """Iterations the PPO cell matching an equal-iterations NLPO cell ran."""
        path = self.result_path(self.ppo_cell(cell))
        if not path.exists():
            raise StateError(f"{cell.label} trains for the iterations of {self.ppo_cell(cell).label}: no result yet")
        return int(_read_json(path)["iterations"])

    # --- the matrix ----------------------------------------------------------------------------

    def matrix_algos(self) -> list[str]:
        """The algorithms of the matrix, with each equal-iterations NLPO cell after its budget twin."""
        algos = list(self.algos)
        if self.equal_iterations:
            for nlpo, ppo in PPO_OF.items():
                if nlpo in algos and ppo in algos:
                    algos.insert(algos.index(nlpo) + 1, nlpo + EQUAL_ITERS)
        return algos

    def cells(self) -> list[Cell]:
        return [
            Cell(task, algo, seed)
            for task in self.tasks
            for algo in self.matrix_algos()
            for seed in ([None] if algo == "zero-shot" else range(self.seeds))
        ]

    def run(self) -> dict[str, Any]:
        if self.equal_iterations and self.budget is None:
            raise InputError(
                "--equal-iterations needs --budget: without one, NLPO and PPO run their configured iterations"
            )
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
            kept = _read_json(done)
            if kept.get("format") != FORMAT:
                raise InputError(
                    f"{done} was written by an older lmgym, without seeds and per-prompt scores; use another "
                    f"--out (or --results), or delete it and {self.runs_dir / cell.name} to redo the cell"
                )
            if kept.get("config_hash") != self.config_hash(cell):
                raise InputError(
                    f"{self.cells_dir} holds a finished {cell.task} × {cell.algo} cell run with other settings "
                    f"({'' if cell.seed is None else f'seed {cell.seed}; '}config, --quick, --budget or --set); "
                    f"use another --out (or --results), or delete {done} and {self.runs_dir / cell.name} to redo it"
                )
            self.console.print(f"[dim]{cell.name}: done earlier, kept[/]")
            return kept
        if cell in self._failed_now:  # e.g. the sft warm start of both sft+ppo and sft+nlpo: tried once per run
            return None
        self.console.rule(cell.label)
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

    def dependencies(self, cell: Cell) -> list[Cell]:
        """Cells that must finish first: the sft warm start, the PPO cell whose iteration count NLPO gets."""
        needed = [Cell(cell.task, "sft", cell.seed)] if cell.warm_start else []
        return needed + ([self.ppo_cell(cell)] if cell.equal_iterations else [])

    def _run_cell(self, cell: Cell) -> dict[str, Any]:
        for needed in self.dependencies(cell):
            if self.run_cell(needed) is None:
                raise StateError(f"{needed.label}, which this cell needs, failed; see {self.failure_path(needed)}")
        fingerprint = self.config_hash(cell)  # of the settings as read now, before the run could see edits
        config = self.config(cell)
        base_model = config.model.name
        train_seconds, iterations, curve = 0.0, 0, []
        model_path = base_model
        if cell.algo != "zero-shot":
            if cell.warm_start:
                config.model.name = self.warm_start_model(cell)
            train_seconds = self._train(cell, config)
            model_path = str(self.runs_dir / cell.name / "final")
            iterations, curve = self.training_log(cell)
        t0 = time.perf_counter()
        scored = evaluate_cell(config, model_path, base_model)
        eval_seconds = time.perf_counter() - t0
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        samples = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored.records)
        (self.samples_dir / f"{cell.name}.jsonl").write_text(samples, encoding="utf-8")
        return {
            "format": FORMAT,
            "task": cell.task,
            "algo": cell.algo,
            "seed": cell.seed,
            "model": config.model.name,
            "base_model": base_model,
            "iterations": iterations,
            "max_train_seconds": config.max_train_seconds if cell.algo != "zero-shot" else None,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "num_prompts": len(scored.records),
            "num_prompts_asked": config.eval.num_prompts,
            "scores": scored.scores,
            "missing": scored.missing,
            "no_interval": scored.no_interval,
            "per_prompt": scored.per_prompt,
            "curve": curve,
            "bench": self.settings,
            "config": self.config_path(cell).relative_to(self.configs_dir).as_posix(),
            "config_hash": fingerprint,
            "lmgym": provenance(),
        }

    def warm_start_model(self, cell: Cell) -> str:
        sft = Cell(cell.task, "sft", cell.seed)
        final = self.runs_dir / sft.name / "final"
        if not final.is_dir():  # the result was kept (e.g. committed) but not the run folder with the model
            raise StateError(
                f"{cell.label} starts from {final}, which is gone: restore {self.runs_dir} or delete "
                f"{self.result_path(sft)} to retrain {sft.label}"
            )
        return str(final)

    def _train(self, cell: Cell, config: TrainConfig) -> float:
        """Trains the cell (continuing an interrupted run) and returns the seconds it took."""
        from lmgym.api import train

        run = self.runs_dir / cell.name
        resume = (run / "config.yaml").exists()  # an interrupted cell continues from its checkpoint
        # The trainer's own before/after table needs only a glance; the bench scores the cell afterwards on
        # eval.num_prompts prompts (scoring them three times per cell would double a CPU run's cost).
        scored_prompts, metrics = config.eval.num_prompts, config.eval.metrics
        config.eval.num_prompts = min(scored_prompts, TRAINER_EVAL_PROMPTS)
        config.eval.metrics = []  # the task's metric set is the bench's to compute, on all its prompts
        t0 = time.perf_counter()
        train(config, resume=resume, overwrite=not resume, console=self.console)
        seconds = time.perf_counter() - t0
        config.eval.num_prompts, config.eval.metrics = scored_prompts, metrics
        # Checkpoints only serve a cell interrupted mid-training; a trained one keeps final/ and its logs
        # (the matrix on the bundled model would otherwise hold ~40 GB of them).
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        return seconds

    def training_log(self, cell: Cell) -> tuple[int, list[list[float]]]:
        """Iterations (steps, for sft) the cell's training ran — fewer than configured when --budget cut it —
        and the task reward of its training rollouts per iteration (none for sft, which logs a loss)."""
        from lmgym.tracking import RunDir

        train = [r for r in RunDir(self.runs_dir / cell.name).read_metrics() if r.get("kind") == "train"]
        curve = [
            [int(r["iteration"]), float(r["reward/task"])]
            for r in train
            if isinstance(r.get("reward/task"), (int, float)) and math.isfinite(r["reward/task"])
        ]
        return max((r["iteration"] for r in train), default=0), curve

    def rescore(self) -> dict[str, str]:
        """Adds to each finished cell of the matrix the task metrics its scoring failed to compute (a metric fixed
        since), from the generations that scoring stored in ``<out>/samples/<cell>.jsonl``: nothing is generated
        again and every stored value stays as it is. Returns, per cell with such a metric, what was done."""
        done: dict[str, str] = {}
        for cell in self.cells():
            outcome = self._rescore_cell(cell)
            if outcome is not None:
                done[cell.name] = outcome
                self.console.print(f"{cell.name}: {outcome}", highlight=False)
        return done

    def _rescore_cell(self, cell: Cell) -> str | None:
        from lmgym.data.registry import load_task

        path = self.result_path(cell)
        result = _read_json(path) if path.exists() else {}
        missing = result.get("missing", {})
        # The evaluation's own scores (FROM_EVALUATION) are not the metric set's, and never fail there.
        failed = [n for n, why in missing.items() if str(why).startswith("failed") and n not in FROM_EVALUATION]
        if not failed:
            return None
        stored = self.samples_dir / f"{cell.name}.jsonl"
        why = None if stored.exists() else f"no stored generations in {stored}"
        if result.get("config_hash") != self.config_hash(cell):
            why = "its settings differ from the config's"
        if why:
            again = "score it" if cell.algo == "zero-shot" else "train and score it"
            return f"not rescored ({why}); with {path} deleted, the next run will {again} again"
        records = [json.loads(line) for line in stored.read_text(encoding="utf-8").splitlines() if line.strip()]
        config = self.config(cell)
        task = load_task(config.task, **config.task_args)
        samples = task.split(config.eval.split)[: len(records)]
        ids = [str(r["id"]) for r in records]
        if ids != [str(s.id) for s in samples] or ids != result.get("per_prompt", {}).get("ids", ids):
            return f"not rescored: {stored} holds other prompts than the result"
        added, missing, per_sample = task_metrics(task, samples, [r["generation"] for r in records], {}, failed)
        result["scores"] |= added
        result["missing"] = {k: v for k, v in result["missing"].items() if k not in failed} | missing
        if result.get("per_prompt"):
            columns, no_interval = metric_columns(added, per_sample, len(records))
            result["per_prompt"] |= columns
            result["no_interval"] = result.get("no_interval", {}) | no_interval
        _write_json(path, result)
        return f"added {', '.join(added) or 'nothing'}" + (f"; still failing: {', '.join(missing)}" if missing else "")

    # --- results -------------------------------------------------------------------------------

    def collect(self) -> dict[str, dict[str, Found]]:
        """Every result and failure file of this matrix's tasks and algorithms (any seed) in the results folder,
        and for task × algorithm pairs without one, the cells of an old-format ``leaderboard.json`` in ``out``."""
        found: dict[tuple[str, str], Found] = {}
        for path in sorted(self.cells_dir.glob("*.json")) if self.cells_dir.is_dir() else []:
            stem = path.name.removesuffix(".json")
            cell = parse_cell_name(stem.removesuffix(".failed"))
            if cell is None:
                continue
            entry = found.setdefault((cell.task, cell.algo), Found())
            data = _read_json(path)
            if stem.endswith(".failed"):
                entry.failures[cell.seed] = str(data.get("error", "failed"))
            else:
                data.setdefault("seed", cell.seed)  # a format-1 result names its seed only through its file
                entry.results.append(data)
        self.legacy_used = {}
        for (task, algo), result in self.legacy_cells().items():
            if not found.get((task, algo), Found()).results and task in self.tasks and algo in self.algos:
                found[(task, algo)] = Found([result])
                self.legacy_used[(task, algo)] = result
        table: dict[str, dict[str, Found]] = {}
        algos = self.algos + [v for v in VARIANTS if v.removesuffix(EQUAL_ITERS) in self.algos]
        for task in self.tasks:
            row = table.setdefault(task, {})
            for algo in sorted(algos, key=ORDER.index):
                entry = found.get((task, algo), Found())
                if entry.results or entry.failures or algo in self.algos:
                    entry.results.sort(key=lambda r: -1 if r.get("seed") is None else r["seed"])
                    row[algo] = entry
        return table

    def legacy_cells(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The cells of a leaderboard written by the first runner (no result files of their own): kept in the
        new leaderboard's ``legacy_cells`` so that a later --report still finds them."""
        path = self.out / "leaderboard.json"
        if not path.exists():
            return {}
        board = _read_json(path)
        if board.get("format") == FORMAT:
            table = board.get("legacy_cells", {})
        else:
            settings = {k: board.get(k) for k in ("profile", "quick", "overrides")}
            settings["budget"] = board.get("budget_seconds")
            table = {
                task: {
                    algo: {
                        **result,
                        "seed": None if algo == "zero-shot" else 0,
                        "max_train_seconds": None if algo == "zero-shot" else settings["budget"],
                        "bench": settings,
                    }
                    for algo, result in row.items()
                    if "scores" in result
                }
                for task, row in board.get("tasks", {}).items()
            }
        return {(task, algo): result for task, row in table.items() for algo, result in row.items()}

    def narrow_to_found(self, tasks_given: bool, algos_given: bool) -> None:
        """For --report without --tasks/--algos: the tasks and algorithms that have results (or failures)."""
        self.tasks = list(GRUE_TASKS + EXTRA_TASKS) if not tasks_given else self.tasks
        self.algos = list(ALGOS) if not algos_given else self.algos
        table = self.collect()
        present = {(t, a) for t, row in table.items() for a, f in row.items() if f.results or f.failures}
        if not tasks_given:
            self.tasks = [t for t in self.tasks if any(p[0] == t for p in present)]
        if not algos_given:
            self.algos = [a for a in self.algos if any(p[1].removesuffix(EQUAL_ITERS) == a for p in present)]

    def write_leaderboard(self) -> dict[str, Any]:
        board = build_board(self.collect(), self.settings, self.out, self.runs_dir)
        if self.legacy_used:  # kept, so that the next --report finds them again
            board["legacy_cells"] = {}
            for (task, algo), result in self.legacy_used.items():
                board["legacy_cells"].setdefault(task, {})[algo] = result
        board = json.loads(json.dumps(_finite(board), default=str))  # what leaderboard.json will hold
        _write_json(self.out / "leaderboard.json", board)
        tmp = self.out / "leaderboard.md.tmp"
        tmp.write_text(leaderboard_markdown(board), encoding="utf-8")
        os.replace(tmp, self.out / "leaderboard.md")
        return board


# --- scoring -----------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """A cell's scores: corpus values, missing metrics (with why), one record per sample, the per-prompt values
    the bootstrap needs (``ids`` and one list per key) and, per metric without them, why not."""

    scores: dict[str, float]
    missing: dict[str, str]
    records: list[dict[str, Any]]
    per_prompt: dict[str, list[Any]]
    no_interval: dict[str, str]


def evaluate_cell(config: TrainConfig, model: str, base_model: str) -> Scored:
    """Scores of ``model`` on the config's held-out prompts: reward, perplexity under ``base_model``,
    distinct-n, length and the task's metric set, with their per-prompt values."""
    from lmgym.data.registry import load_task
    from lmgym.models.policy import ReferenceModel
    from lmgym.rollout.evaluation import evaluate
    from lmgym.rollout.sampling import generation_config, load_policy

    task = load_task(config.task, **config.task_args)
    base = load_policy(base_model, config, task)
    policy = base if model == base_model else load_policy(model, config, task)
    reference = ReferenceModel(base.model, base.is_seq2seq)
    generation = generation_config(config.generation, task, policy.tokenizer)
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
    task_scores, missing, per_sample = task_metrics(task, samples, generations, scores)
    for record, sample in zip(records, samples, strict=True):
        record["references"] = list(sample.references)
    scores = {**scores, **task_scores}
    nll = ([r["ref_nll"] for r in records], [r["tokens"] for r in records])
    per_prompt, no_interval = per_prompt_values(scores, records, nll, per_sample)
    return Scored(scores, missing, records, per_prompt, no_interval)


def task_metrics(
    task: Task, samples: list, generations: list[str], evaluated: dict[str, float], names: list[str] | None = None
) -> tuple[dict[str, float], dict[str, str], dict[str, list[float]]]:
    """Corpus scores of the task's metric set (or of ``names`` alone) on ``generations`` (in the set's order); for
    each metric that cannot run here or fails, the reason (reported in the leaderboard instead of a score); the
    per-sample values of those that have them."""
    from lmgym.rewards.catalog import metric_infos
    from lmgym.rollout.metric_set import MetricSet

    registered = metric_infos()
    names = list(task.metrics) if names is None else names
    scored = MetricSet([n for n in names if n in registered], task.annotate).score(samples, generations)
    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in names:
        if name in FROM_EVALUATION:
            scores[name] = evaluated[FROM_EVALUATION[name]]
        elif name not in registered:
            missing[name] = "not a registered metric (`lmgym metrics` lists them)"
        elif name in scored.missing:
            missing[name] = scored.missing[name]
        else:
            scores.update({key: scored.scores[key] for key in scored.keys[name]})
    return scores, missing, scored.per_sample


def per_prompt_values(
    scores: dict[str, float],
    records: list[dict[str, Any]],
    nll: tuple[list[float], list[int]],
    per_sample: dict[str, list[float]],
) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """The per-prompt values to store for the bootstrap, and why each other score has no interval. A score
    gets per-prompt values only when it is their mean (perplexity: exp(Σ NLL / Σ tokens)), so that the
    interval is an interval of the number in the table."""
    n = len(records)
    nll_sums, tokens = nll
    candidates: dict[str, list[float]] = {"reward": [float(r["reward"]) for r in records], **per_sample}
    values: dict[str, list[Any]] = {"ids": [str(r["id"]) for r in records]}
    no_interval: dict[str, str] = {}
    if len(nll_sums) == n == len(tokens) and n and _agrees(math.exp(sum(nll_sums) / max(sum(tokens), 1)), scores):
        values["nll_sum"], values["tokens"] = [_round(v) for v in nll_sums], [int(t) for t in tokens]
        candidates["gen_len"] = [float(t) for t in tokens]
    else:  # the evaluation no longer scores through the reference model's logprobs, one call per batch
        no_interval["perplexity"] = "per-prompt NLL was not recorded by this evaluation"
    means = {"reward", "gen_len"}  # means by construction (evaluate's); a metric's corpus value is checked
    for name, source in FROM_EVALUATION.items():
        if source in candidates:
            candidates.setdefault(name, candidates[source])
            means.add(name)
    scored = {k: v for k, v in scores.items() if k != "perplexity" and k not in no_interval}
    columns, why = metric_columns(scored, candidates, n, means)
    return values | columns, no_interval | why


def metric_columns(
    scores: dict[str, float], candidates: dict[str, list[float]], n: int, means: set[str] | frozenset = frozenset()
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Of each score, its per-prompt column when the score is that column's mean (``means``: known to be), and
    otherwise why it has none."""
    values: dict[str, list[float]] = {}
    no_interval: dict[str, str] = {}
    for name, score in scores.items():
        column = candidates.get(name)
        if column is None or len(column) != n or not n:
            no_interval[name] = "corpus-level: no per-prompt values"
        elif not math.isclose(sum(column) / n, score, rel_tol=1e-6, abs_tol=1e-9):
            no_interval[name] = "a corpus statistic, not the mean of its per-prompt values"
        elif name not in means and len(set(column)) == 1:  # equal values match any statistic of them
            no_interval[name] = "per-prompt values all equal: cannot tell whether its value is their mean"
        else:
            values[name] = [_round(v) for v in column]
    return values, no_interval


def _agrees(perplexity: float, scores: dict[str, float]) -> bool:
    return "perplexity" in scores and math.isclose(perplexity, scores["perplexity"], rel_tol=1e-4)


def _round(value: float) -> float:
    return float(f"{value:.{PER_PROMPT_DIGITS}g}")


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, str | None]:
    """lmgym's version and, from a git checkout, its commit (uncommitted edits are not recorded)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed: str | None = version("lmgym")
    except PackageNotFoundError:
        installed = None
    commit = None
    root = Path(__file__).resolve().parents[3]
    if (root / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
            )
            commit = done.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": installed, "commit": commit}


# --- the leaderboard ---------------------------------------------------------------------------------------


def aggregate(task: str, algo: str, found: Found) -> dict[str, Any]:
    """One task × algorithm of the leaderboard: means (and standard deviations) over its seeds, ..."""
    if not found.results:
        return {"error": next(iter(found.failures.values()), "not run")}
    results = found.results
    keys: list[str] = []
    for result in results:
        keys += [k for k in result.get("scores", {}) if k not in keys]
    scores: dict[str, float | None] = {}
    std: dict[str, float] = {}
    partial: dict[str, int] = {}  # metrics that some seeds lack (their scoring failed): over how many seeds
    for key in keys:
        values = [r["scores"].get(key) for r in results]
        mean, spread = stats.seed_spread(values)
        scores[key] = mean
        if spread is not None:
            std[key] = spread
        present = sum(v is not None and math.isfinite(v) for v in values)
        if 0 < present < len(results):
            partial[key] = present
    iterations = [r.get("iterations", 0) for r in results]
    first = results[0]
    entry: dict[str, Any] = {
        "task": task,
        "algo": algo,
        "seeds": [r.get("seed") for r in results],
        "num_prompts": first.get("num_prompts"),
        "scores": scores,
        "std": std,
        "iterations": iterations[0] if len(set(iterations)) == 1 else sum(iterations) / len(iterations),
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in results) / len(results),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in results) / len(results),
        "max_train_seconds": first.get("max_train_seconds"),
        "missing": {k: v for r in results for k, v in r.get("missing", {}).items()},
        "model": first.get("model"),
        "base_model": first.get("base_model"),
        "per_prompt_data": all(r.get("per_prompt") for r in results),
    }
    if partial:
        entry["partial_seeds"] = partial
    if len(results) > 1:
        entry["per_seed"] = {
            str(r.get("seed")): {k: r.get(k) for k in ("scores", "iterations", "train_seconds")} for r in results
        }
    warnings = []
    if len({r.get("num_prompts") for r in results}) > 1 or len({r.get("config_hash") for r in results}) > 1:
        warnings.append("its seeds were scored on different prompts or run with different settings")
    asked = first.get("num_prompts_asked")
    if asked and first.get("num_prompts", asked) < asked:
        warnings.append(f"scored {first['num_prompts']} prompts of the {asked} asked: the split has no more")
    if warnings:
        entry["warning"] = "; ".join(warnings)
    failed = {str(s): e for s, e in found.failures.items() if s not in entry["seeds"]}
    if failed:
        entry["failed_seeds"] = failed
    return entry


def cell_data(algo: str, found: Found, entry: dict[str, Any]) -> stats.CellData:
    """What the statistics need of a task × algorithm with results."""
    results = found.results
    per_prompt, why = None, NO_PER_PROMPT
    if all(r.get("per_prompt") for r in results):
        try:
            per_prompt = stats.PerPrompt.from_seeds([r["per_prompt"] for r in results])
        except InputError as err:
            why = str(err)
    iterations = {0 if r.get("seed") is None else int(r["seed"]): int(r.get("iterations", 0)) for r in results}
    return stats.CellData(algo, entry["scores"], per_prompt, iterations, results[0].get("max_train_seconds"), why)


def build_board(
    table: dict[str, dict[str, Found]], settings: dict[str, Any], out: Path, runs_dir: Path | None = None
) -> dict[str, Any]:
    """The leaderboard (JSON) of the collected results, with intervals, comparisons, findings and plots."""
    from lmgym.bench.grue_plots import plot_reward_curves, plot_reward_vs_perplexity

    tasks: dict[str, dict[str, Any]] = {}
    data: dict[str, dict[str, stats.CellData]] = {}
    for task, row in table.items():
        tasks[task], data[task] = {}, {}
        for algo, found in row.items():
            entry = aggregate(task, algo, found)
            tasks[task][algo] = entry
            if "error" not in entry:
                data[task][algo] = cell_data(algo, found, entry)
                add_intervals(entry, data[task][algo], found.results)
    plots: dict[str, list[str]] = {}
    for task, row in table.items():
        curves = {a: _curves(f, runs_dir) for a, f in row.items() if a != "zero-shot" and f.results}
        points = {a: _points(tasks[task][a]) for a in row if "error" not in tasks[task][a]}
        made = [
            plot_reward_curves(task, curves, out / "plots" / f"{task}_reward_curves.png"),
            plot_reward_vs_perplexity(task, points, out / "plots" / f"{task}_reward_vs_perplexity.png"),
        ]
        plots[task] = [str(p.relative_to(out)) for p in made if p is not None]
    lacking = [f"{t} × {a}" for t, row in data.items() for a, cell in row.items() if cell.per_prompt is None]
    used = [r.get("bench") for row in table.values() for f in row.values() for r in f.results if r.get("bench")]
    kinds = {json.dumps(s, sort_keys=True) for s in used}
    common = json.loads(next(iter(kinds))) if len(kinds) == 1 else settings
    return {
        "format": FORMAT,
        "profile": common.get("profile"),
        "quick": common.get("quick"),
        "budget_seconds": common.get("budget"),
        "overrides": common.get("overrides") or [],
        "mixed_settings": len(kinds) > 1,
        "bootstrap": {
            "confidence": stats.CONFIDENCE,
            "resamples": stats.RESAMPLES,
            "seed": stats.BOOTSTRAP_SEED,
            "method": stats.METHOD,
        },
        "tasks": tasks,
        "rl_vs_supervised": {task: rl_vs_supervised(cells) for task, cells in data.items()},
        "comparisons": {task: [c.to_json() for c in stats.pairwise(cells)] for task, cells in data.items()},
        "findings": stats.findings(data),
        "cells_without_per_prompt_data": lacking,
        "plots": plots,
    }


def add_intervals(entry: dict[str, Any], cell: stats.CellData, results: list[dict[str, Any]]) -> None:
    """Adds ``intervals`` (metric → estimate, low, high, width) and ``no_interval`` (metric → why) to an entry."""
    reasons = {k: v for r in results for k, v in r.get("no_interval", {}).items()}
    entry["intervals"], entry["no_interval"] = {}, {}
    for metric, value in entry["scores"].items():
        if value is None:
            continue
        interval, why = stats.cell_interval(cell, metric)
        if interval is None:
            entry["no_interval"][metric] = reasons.get(metric, why) if cell.per_prompt is not None else why
        else:
            entry["intervals"][metric] = interval.to_json()


def _curves(found: Found, runs_dir: Path | None) -> dict[str, list[tuple[int, float]]]:
    """Training reward per iteration of each seed: from the result files, or, for a format-1 result, from its
    run folder when that is still there."""
    from lmgym.bench.grue_plots import train_rewards

    curves = {}
    for result in found.results:
        seed = str(result.get("seed"))
        if "curve" in result:
            curves[seed] = [(int(i), float(r)) for i, r in result["curve"]]
        elif runs_dir is not None:
            name = Cell(result.get("task", ""), result.get("algo", ""), result.get("seed")).name
            curves[seed] = train_rewards(runs_dir / name)
    return {s: c for s, c in curves.items() if c}


def _points(entry: dict[str, Any]) -> dict[str, Any]:
    """Reward against perplexity of a task × algorithm: per seed, their mean and its intervals."""
    per_seed = entry.get("per_seed") or {"": {"scores": entry["scores"]}}
    seeds = [(s["scores"].get("perplexity"), s["scores"].get("reward")) for s in per_seed.values()]

    def bounds(metric: str) -> tuple[float, float] | None:
        found = entry.get("intervals", {}).get(metric)
        return None if found is None else (found["low"], found["high"])

    return {
        "seeds": seeds,
        "mean": (entry["scores"].get("perplexity"), entry["scores"].get("reward")),
        "perplexity_ci": bounds("perplexity"),
        "reward_ci": bounds("reward"),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _mean_std(entry: dict[str, Any], metric: str) -> str:
    spread = entry.get("std", {}).get(metric)
    text = _fmt(entry["scores"].get(metric)) + ("" if spread is None else f" ± {_fmt(spread)}")
    present = entry.get("partial_seeds", {}).get(metric)
    return text if present is None else f"{text} ({present} of {len(entry['seeds'])} seeds)"


def _ci(interval: dict[str, float] | None) -> str:
    return "no interval" if interval is None else f"[{_fmt(interval['low'])}, {_fmt(interval['high'])}]"


def _iterations(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else str(int(value or 0))


def leaderboard_markdown(board: dict[str, Any]) -> str:
    lines = ["# GRUE leaderboard", ""]
    mode = "quick (tiny model, offline data)" if board["quick"] else f"profile {board['profile']}"
    budget = f", budget {board['budget_seconds']:g}s per trained cell" if board["budget_seconds"] else ""
    lines += [f"Mode: {mode}{budget}. Overrides: {' '.join(board['overrides']) or 'none'}."]
    if board.get("mixed_settings"):
        lines.append("**The result files were made with different bench settings** (see each cell's file).")
    b = board["bootstrap"]
    lines += [
        "",
        f"Intervals: {b['confidence']:.0%} {b['method']} bootstrap over each cell's held-out prompts ({b['resamples']} "
        f"resamples, seed {b['seed']}; a cell's seeds are resampled too when it has several). Comparisons between "
        "cells of a task are paired: every resample draws the same prompts for both. `a ± s`: mean and standard "
        "deviation over seeds. Decision rules: `lmgym.bench.grue_stats`.",
        "",
    ]
    if board["cells_without_per_prompt_data"]:
        lines += [
            "Cells without per-prompt data (point values only; no intervals; their comparisons are inconclusive): "
            + ", ".join(board["cells_without_per_prompt_data"])
            + ".",
            "",
        ]
    lines += ["Does the best RL cell (by mean task reward) beat supervised fine-tuning? Paired bootstrap:", ""]
    lines += rl_vs_supervised_table(board["rl_vs_supervised"])
    lines += ["## GRUE's findings against this run", ""]
    lines += [
        stats.findings_markdown(board["findings"]),
        "Overall: the verdict over the tasks, (consistent/inconsistent/inconclusive of the tasks judged). "
        "The comparisons behind each task's verdict:",
        "",
    ]
    lines += findings_details(board["findings"])
    lines += reward_matrix(board["tasks"])
    for task, row in board["tasks"].items():
        lines += task_section(task, row, board["comparisons"].get(task, []), board["plots"].get(task, []))
    return "\n".join(lines)


def rl_vs_supervised_table(verdicts: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| task | RL beats supervised? | best RL (reward) | sft (reward) | best RL − sft [95% CI] | CI width |",
        "|---|---|---|---|---|---|",
    ]
    for task, verdict in verdicts.items():
        if verdict["verdict"] == stats.NA:
            lines.append(f"| {task} | n/a | | | | |")
            continue
        diff = verdict["difference"]
        width = _fmt(diff["interval"]["width"]) if diff["interval"] else "—"
        lines.append(
            f"| {task} | {verdict['verdict']} | {verdict['best_rl']} ({_fmt(verdict['best_rl_reward'])}) "
            f"| {_fmt(verdict['sft_reward'])} | {_fmt(diff['estimate'])} {_ci(diff['interval'])} | {width} |"
        )
    return [*lines, ""]


def findings_details(found: dict[str, Any]) -> list[str]:
    lines = ["| finding | task | verdict | comparisons: estimate [95% CI] |", "|---|---|---|---|"]
    for row in found.values():
        short = row["claim"].split(")")[0] + ")" + (" equal iterations" if "equal iterations" in row["claim"] else "")
        short += " equal wall-clock" if "wall-clock" in row["claim"] else ""
        for task, judged in row["tasks"].items():
            parts = [
                f"{c['metric']} {c['comparison']}: {_fmt(c['estimate'])} {_ci(c['interval'])}"
                for c in judged["comparisons"]
            ]
            detail = "; ".join(parts) or judged["note"] or "cells missing"
            if parts and judged["note"]:
                detail += f" ({judged['note']})"
            lines.append(f"| {short} | {task} | {judged['verdict']} | {detail} |")
    return [*lines, ""]


def reward_matrix(tasks: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines of the task reward (and perplexity) of every cell: tasks down, algorithms across, the best
    reward of each task in bold, ± the standard deviation over seeds."""
    algos = [a for a in ORDER if any(a in row for row in tasks.values())]
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
            spread = row[algo].get("std", {}).get("reward")
            cells.append(
                f"{'**' + reward + '**' if rewards[algo] == best else reward}"
                f"{'' if spread is None else ' ± ' + _fmt(spread)} ({_fmt(row[algo]['scores'].get('perplexity'))})"
            )
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def task_section(
    task: str, row: dict[str, dict[str, Any]], comparisons: list[dict[str, Any]], plots: list[str]
) -> list[str]:
    keys: list[str] = []
    for result in row.values():
        keys += [k for k in result.get("scores", {}) if k not in keys]
    head = ["reward", "perplexity"]
    keys = head + [k for k in keys if k not in head]
    lines = [f"## {task}", "", "| algo | seeds | " + " | ".join(keys) + " | iterations | train s |"]
    lines.append("|---" * (len(keys) + 4) + "|")
    for algo, result in row.items():
        if "error" in result:
            lines.append(f"| {algo} | failed: {result['error'][:150]} |" + " |" * (len(keys) + 2))
            continue
        values = [_mean_std(result, k) for k in keys]
        seeds = len(result["seeds"])
        lines.append(
            f"| {algo} | {seeds} | " + " | ".join(values) + f" | {_iterations(result.get('iterations'))} "
            f"| {result.get('train_seconds', 0.0):.0f} |"
        )
    notes = sorted({f"{a}: {r['warning']}" for a, r in row.items() if r.get("warning")})
    notes += sorted(
        {f"{a} seed {s} failed: {e[:150]}" for a, r in row.items() for s, e in r.get("failed_seeds", {}).items()}
    )
    lines += ["", *(f"Note: {n}" for n in notes)] if notes else []
    lines += interval_table(row)
    if comparisons:
        lines += ["", "Paired comparisons of the task reward:", ""]
        lines += ["| comparison | difference | 95% CI | CI width | answer |", "|---|---|---|---|---|"]
        answers = {1: "higher", -1: "lower", 0: "within noise", None: "no interval"}
        for c in comparisons:
            width = _fmt(c["interval"]["width"]) if c["interval"] else "—"
            lines.append(
                f"| {c['comparison']} | {_fmt(c['estimate'])} | {_ci(c['interval'])} | {width} | {answers[c['sign']]} |"
            )
    missing = sorted({f"{k}: {v}" for r in row.values() for k, v in r.get("missing", {}).items()})
    if missing:
        lines += ["", "Not computed here: " + "; ".join(m[:200] for m in missing)]
    for plot in plots:
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    return [*lines, ""]


def interval_table(row: dict[str, dict[str, Any]]) -> list[str]:
    """Each cell's 95% intervals, with their widths and the means ± std over seeds beside; then the metrics
    that have none, grouped by why."""
    prompts = sorted({r["num_prompts"] for r in row.values() if r.get("num_prompts")})
    lines = ["", f"95% intervals over the {', '.join(map(str, prompts)) or '—'} held-out prompts:", ""]
    lines += ["| algo | metric | mean ± std over seeds | 95% CI | CI width |", "|---|---|---|---|---|"]
    reasons: dict[str, set[str]] = {}
    for algo, result in row.items():
        for metric, interval in result.get("intervals", {}).items():
            lines.append(
                f"| {algo} | {metric} | {_mean_std(result, metric)} | {_ci(interval)} | {_fmt(interval['width'])} |"
            )
        for metric, why in result.get("no_interval", {}).items():
            reasons.setdefault(why, set()).add(metric)
    for why, metrics in sorted(reasons.items()):
        lines += ["", f"No interval ({why}): {', '.join(sorted(metrics))}."]
    return lines


def findings_table(results: str | Path, tasks: list[str] | None = None, out: str | Path | None = None) -> str:
    """The findings table (markdown) of the result files in ``results`` (and, for cells without one, an old
    ``leaderboard.json`` in ``out``), without writing anything: the table the README quotes."""
    out_dir = Path(out) if out is not None else Path(results).parent
    bench = GrueBench(out_dir, list(tasks or GRUE_TASKS + EXTRA_TASKS), list(ALGOS), results=results)
    if tasks is None:
        bench.narrow_to_found(tasks_given=False, algos_given=True)
    data: dict[str, dict[str, stats.CellData]] = {}
    for task, row in bench.collect().items():
        data[task] = {}
        for algo, found in row.items():
            entry = aggregate(task, algo, found)
            if "error" not in entry:
                data[task][algo] = cell_data(algo, found, entry)
    return stats.findings_markdown(stats.findings(data))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# A flat list of numbers (or short strings) on one line: per-prompt values would otherwise take a line each.
_FLAT_LIST = re.compile(
    r'\[\n\s+((?:(?:-?[\d.eE+-]+|null|"[^"\\\[\]\n]*"),\n\s+)*(?:-?[\d.eE+-]+|null|"[^"\\\[\]\n]*"))\n\s*\]'
)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(_finite(data), indent=2, default=str)
    text = _FLAT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]", text)
    tmp.write_text(text + "\n", encoding="utf-8")
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
    seeds: int = 1,
    results: str | Path | None = None,
    equal_iterations: bool = False,
    rescore: bool = False,
) -> dict[str, Any]:
    """Run (or continue) the GRUE matrix; ``tasks``/``algos`` are comma-separated lists. ``report``: only
    rewrite the leaderboard and plots from the result files (in ``results``, default ``out/cells``) — nothing
    is trained or scored, no run folder is needed, and without ``tasks``/``algos`` every one with results is
    shown. ``rescore``: first add to the finished cells of the matrix the metrics whose scoring failed
    (`GrueBench.rescore`, from the stored generations), then rebuild the leaderboard as ``report`` does."""
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
        seeds=seeds,
        results=results,
        equal_iterations=equal_iterations,
    )
    if rescore:
        bench.rescore()
    if report or rescore:
        bench.narrow_to_found(tasks_given=bool(tasks), algos_given=bool(algos))
        board = bench.write_leaderboard()
        if board["cells_without_per_prompt_data"]:
            bench.console.print(
                "cells without per-prompt data (no intervals): " + ", ".join(board["cells_without_per_prompt_data"]),
                highlight=False,
            )
        bench.console.print(f"leaderboard of the finished cells in [bold]{bench.out / 'leaderboard.md'}[/]")
        return board
    return bench.run()
