"""What a run writes: resolved config, metrics.jsonl, samples.jsonl, rollouts.jsonl and plots."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lmgym.config import ConfigError, TrainConfig, dump_config, load_config
from lmgym.errors import MissingFileError

# Settings a resumed run may change (train longer, for another time budget, report to other trackers); the rest
# must match.
RESUMABLE_CHANGES = {"name", "iterations", "max_train_seconds", "tracking"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_folder(config: TrainConfig, resume: bool) -> tuple[Path, str | None]:
    """The run's folder, and a note when ``--resume`` had to find it: a config without ``name`` makes a new
    timestamped folder each time, so ``--resume`` continues the newest unfinished run of the same config
    (the same settings apart from `RESUMABLE_CHANGES`) under ``run_dir``."""
    root = Path(config.run_dir)
    if config.name:
        return root / config.name, None
    if not resume:
        return root / f"{config.task}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}", None
    matches = same_config_runs(root, config)
    unfinished = [m for m in matches if not (m / "final").exists()]
    if not unfinished:
        if matches:
            names = ", ".join(m.name for m in matches)
            raise MissingFileError(
                f"--resume: every run of this config under {root} has finished ({names}); to train one longer, "
                "name it: --set name=<run> --set iterations=<more> --resume"
            )
        raise MissingFileError(f"--resume: there is no run of this config under {root}; start one without --resume")
    stamps = sorted(((last_activity(m), m) for m in unfinished), reverse=True)
    if len(stamps) > 1 and stamps[0][0] == stamps[1][0]:
        names = ", ".join(m.name for _, m in stamps)
        raise MissingFileError(
            f"--resume: several unfinished runs of this config ({names}); pick one: --set name=<run>"
        )
    picked = stamps[0][1]
    others = f" (also unfinished: {', '.join(m.name for _, m in stamps[1:])})" if len(stamps) > 1 else ""
    return picked, f"the newest unfinished run of this config{others}"


def same_config_runs(root: Path, config: TrainConfig) -> list[Path]:
    """Run folders under ``root`` whose config.yaml equals ``config`` apart from `RESUMABLE_CHANGES`."""
    wanted = config.model_dump(mode="json", exclude=RESUMABLE_CHANGES)
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            theirs = load_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
        except ConfigError:  # written by another version of lmgym, or not a training run
            continue
        if theirs is not None and theirs.model_dump(mode="json", exclude=RESUMABLE_CHANGES) == wanted:
            found.append(folder)
    return found


def last_activity(folder: Path) -> float:
    """When the run last wrote progress (its metrics or a checkpoint)."""
    paths = [folder / "metrics.jsonl", folder / "checkpoints", folder / "config.yaml"]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.metrics_path = self.root / "metrics.jsonl"
        self.samples_path = self.root / "samples.jsonl"
        self.rollouts_path = self.root / "rollouts.jsonl"  # training samples (rollout.log_samples_every)
        self.environment_path = self.root / "environment.jsonl"  # one line per start, new or resumed
        self.plots = self.root / "plots"
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"

    def create(self, config: TrainConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(exist_ok=True)
        tmp = self.root / "config.yaml.tmp"
        tmp.write_text(dump_config(config), encoding="utf-8")
        os.replace(tmp, self.root / "config.yaml")

    def log_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def log_start(self, start_iteration: int, processes: int, device: str) -> None:
        """A start of the run (new, resumed, or started over): its machine and library versions
        (`lmgym.environment.environment`), appended to environment.jsonl."""
        from lmgym.environment import environment  # imports torch, which reading a run folder does not need

        self._append(self.environment_path, [environment(start_iteration, processes, device)])

    def log_samples(self, records: list[dict[str, Any]]) -> None:
        """Held-out generations of an evaluation (samples.jsonl)."""
        self._append(self.samples_path, records)

    def log_rollouts(self, records: list[dict[str, Any]]) -> None:
        """Samples of a training rollout (rollouts.jsonl)."""
        self._append(self.rollouts_path, records)

    @staticmethod
    def _append(path: Path, records: list[dict[str, Any]]) -> None:
        with path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({k: _jsonable(v) for k, v in r.items()}, ensure_ascii=False) + "\n")

    def config(self) -> TrainConfig:
        """The run's resolved config (config.yaml)."""
        if not (self.root / "config.yaml").exists():
            raise MissingFileError(f"{self.root} is not a run folder (no config.yaml)")
        return load_config(self.root / "config.yaml")

    def final_model(self) -> Path:
        """The folder of the run's final policy: final/, or final/adapter/ (a LoRA run with
        peft.merge_on_save=false, which loads onto its base model)."""
        for folder in (self.final, self.final / "adapter"):
            if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
                return folder
        raise MissingFileError(f"{self.root} has no final/ model; it has not finished (resume it with --resume)")

    def trained(self) -> bool:
        """Whether any training iteration completed (a record, or a checkpoint)."""
        has_checkpoint = self.checkpoints.is_dir() and any(self.checkpoints.iterdir())
        return has_checkpoint or any(r.get("kind") == "train" for r in self.read_metrics())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line a killed process left half-written
                continue
        return records

    def truncate_after(self, iteration: int) -> None:
        """Drop what a resume from ``iteration`` will redo: records of later iterations, the final
        evaluation (it comes after the last checkpoint) and a line a kill cut short."""
        for path in (self.metrics_path, self.samples_path, self.rollouts_path):
            if not path.exists():
                continue
            keep = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # only the last line can be partial: the process died while appending it
                if record.get("iteration", 0) <= iteration and not record.get("final"):
                    keep.append(line)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, path)

    def plot(self) -> Path | None:
        """Task reward and KL per iteration, from metrics.jsonl."""
        records, evals = self.train_and_eval_records()
        if not records:
            return None
        its = [r["iteration"] for r in records]
        fig, axes = self.figure()
        axes[0].plot(its, [r["reward/task"] for r in records], label="train reward")
        if evals:
            axes[0].plot([r["iteration"] for r in evals], [r["eval/reward"] for r in evals], "o--", label="eval reward")
        axes[0].set_xlabel("iteration")
        axes[0].set_ylabel("task reward")
        axes[0].legend()
        axes[1].plot(its, [r["kl"] for r in records], color="tab:red", label="KL (nats/seq)")
        axes[1].set_xlabel("iteration")
        axes[1].set_ylabel("KL to reference")
        ax2 = axes[1].twinx()
        ax2.plot(its, [r["kl_coef"] for r in records], color="tab:gray", ls=":", label="β")
        ax2.set_ylabel("β")
        return self.save_figure(fig, "reward_kl.png")

    def train_and_eval_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        records = self.read_metrics()
        return [r for r in records if r.get("kind") == "train"], [r for r in records if r.get("kind") == "eval"]

    @staticmethod
    def figure() -> tuple[Any, Any]:
        """A figure of two panels side by side, drawn off-screen."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt.subplots(1, 2, figsize=(10, 3.6))

    def save_figure(self, fig: Any, name: str) -> Path:
        import matplotlib.pyplot as plt

        fig.suptitle(self.root.name)
        fig.tight_layout()
        out = self.plots / name
        self.plots.mkdir(exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
