"""Experiment trackers: what metrics.jsonl holds, sent to the tools people watch runs in (``tracking.report_to``).

Each backend gets every scalar of each iteration's record at step = iteration, each evaluation's metrics
(``eval/...``) at the iteration it evaluated, the resolved config as hyperparameters, and a table of held-out
generations (W&B and trackio tables, an MLflow table artifact, TensorBoard text). The Trainer opens them on the
main process only (`Trackers.open`) and feeds them the records it writes to metrics.jsonl.

A resumed run continues the same tracker runs: their ids live in the run folder's ``trackers.json``. The
resume repeats the iterations after its checkpoint, which the trackers may have seen already (a kill after the
checkpoint), so:

- TensorBoard starts a writer with ``purge_step`` = the first repeated iteration: TensorBoard drops every
  older event at or after that step, and the repeated iterations are logged again.
- W&B, trackio and MLflow only append, so each remembers (in ``trackers.json``) the last step it logged of
  training records and of evaluations, and a resumed run sends only later steps. A resume is exact (the
  repeated iterations reproduce the same records), so what these backends hold is what metrics.jsonl holds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, get_args

from lmgym.config import TrackerName, TrainConfig, dump_config
from lmgym.errors import InputError, MissingPackageError
from lmgym.tracking import RunDir

TRACKERS: tuple[str, ...] = get_args(TrackerName)
# backend → the module it needs (each in the `tracking` extra)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
STATE_FILE = "trackers.json"
SAMPLE_COLUMNS = ("iteration", "prompt", "generation", "reward")
STREAMS = ("train", "eval")  # a record's kind; each backend remembers the last step it logged of each


def check_installed(report_to: list[str]) -> None:
    """Refuse, before anything is loaded, backends whose package is missing (with the pip command)."""
    missing = [name for name in report_to if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise MissingPackageError(
            f"tracking.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'lmgym[tracking]'"
        )


def tracked_config(config: TrainConfig) -> dict[str, Any]:
    """The resolved config as the trackers see it: without the sections of the algorithms this run does not use
    (every algorithm has one, and ten sections of defaults would bury the settings that matter)."""
    data = config.model_dump(mode="json")
    algos = get_args(TrainConfig.model_fields["algo"].annotation)
    return {k: v for k, v in data.items() if k not in algos or k == config.algo}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested settings as dotted keys with scalar values (lists and None as JSON), for backends whose
    hyperparameters are flat (TensorBoard, MLflow)."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record (its step and kind aside)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in ("iteration", "kind", "final") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def sample_rows(iteration: int, records: list[dict[str, Any]], limit: int) -> list[list[Any]]:
    """The first ``limit`` held-out generations of an evaluation as table rows (`SAMPLE_COLUMNS`)."""
    return [[iteration, str(r["prompt"]), r["generation"], float(r["reward"])] for r in records[:limit]]


class Backend:
    """One tracker run. ``purges``: a resume discards what the backend holds after the checkpoint itself
    (TensorBoard), so nothing needs skipping; ``state``: what a resume needs to find the run again."""

    name = "backend"
    purges = False

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.where = ""  # where to look, for the line printed at the start

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_samples(self, rows: list[list[Any]], step: int) -> None:
        raise NotImplementedError

    def finish(self, failed: bool) -> None:
        raise NotImplementedError


class TensorBoardBackend(Backend):
    """Event files in the run folder's ``tensorboard/`` (``tensorboard --logdir runs`` shows every run)."""

    name = "tensorboard"
    purges = True

    def __init__(self, config: TrainConfig, run: RunDir, resumed_from: int | None, saved: dict[str, Any]) -> None:
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        folder = run.root / "tensorboard"
        self.where = str(folder)
        # purge_step: TensorBoard discards the events of earlier writers at and after this step.
        self.writer = SummaryWriter(str(folder), purge_step=None if resumed_from is None else resumed_from + 1)
        if resumed_from is None:  # the hyperparameters are logged once, at step 0 (a purge keeps them)
            for summary in hparams(flatten(tracked_config(config)), {"eval/reward": 0.0, "reward/task": 0.0}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```yaml\n" + dump_config(config) + "```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_samples(self, rows: list[list[Any]], step: int) -> None:
        def cell(value: Any) -> str:
            return str(value).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text("eval/samples", "\n".join(lines), step)
        self.writer.flush()

    def finish(self, failed: bool) -> None:
        self.writer.close()


class WandbBackend(Backend):
    """A W&B run (online, or offline with ``WANDB_MODE=offline``); its files go to ``$WANDB_DIR`` or the run
    folder. The run id is kept, so a resume continues the same W&B run."""

    name = "wandb"

    def __init__(self, config: TrainConfig, run: RunDir, resumed_from: int | None, saved: dict[str, Any]) -> None:
        super().__init__()
        import wandb

        run_id = saved.get("id") or secrets.token_hex(6)  # W&B ids: letters and digits
        self.run = wandb.init(
            project=config.tracking.project,
            name=run_name(config, run),
            id=run_id,
            resume="allow",
            dir=None if os.environ.get("WANDB_DIR") else str(run.root),
            reinit="create_new",
        )
        self.run.config.update(tracked_config(config), allow_val_change=True)  # a resume may train longer
        self.state = {"id": run_id}
        self.where = f"project {config.tracking.project}, run {self.run.name} ({run_id})"
        self.wandb = wandb

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_samples(self, rows: list[list[Any]], step: int) -> None:
        self.run.log({"eval/samples": self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)}, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TrackioBackend(Backend):
    """A trackio run, stored where trackio keeps its projects ($TRACKIO_DIR, else ~/.cache/huggingface/trackio;
    ``trackio show`` opens the dashboard). A resume continues the run of the same name."""

    name = "trackio"

    def __init__(self, config: TrainConfig, run: RunDir, resumed_from: int | None, saved: dict[str, Any]) -> None:
        super().__init__()
        import trackio

        name = saved.get("name") or run_name(config, run)
        with quiet():  # trackio prints its own banner; lmgym prints one line for every tracker
            self.run = trackio.init(
                project=config.tracking.project,
                name=name,
                config=tracked_config(config),
                resume="allow" if saved else "never",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
        self.state = {"name": self.run.name}
        self.where = f"project {config.tracking.project}, run {self.run.name} (trackio show)"
        self.trackio = trackio

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_samples(self, rows: list[list[Any]], step: int) -> None:
        self.run.log({"eval/samples": self.trackio.Table(columns=list(SAMPLE_COLUMNS), data=rows)}, step=step)

    def finish(self, failed: bool) -> None:
        with quiet():
            self.run.finish()


class MlflowBackend(Backend):
    """An MLflow run in the experiment ``tracking.project`` at ``tracking.mlflow_uri`` (else
    $MLFLOW_TRACKING_URI or MLflow's default); samples are table artifacts ``eval_samples/iteration-N.json``."""

    name = "mlflow"
    max_params = 100  # MLflow's limit per batch

    def __init__(self, config: TrainConfig, run: RunDir, resumed_from: int | None, saved: dict[str, Any]) -> None:
        super().__init__()
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=config.tracking.mlflow_uri)
        project = config.tracking.project
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        run_id = saved.get("id")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            known = self.client.get_run(run_id).data.params
        else:
            created = self.client.create_run(experiment_id, run_name=run_name(config, run))
            run_id, known = created.info.run_id, {}
        # A param cannot change once logged: a resume adds only the settings the run has not seen.
        params = [Param(k, str(v)) for k, v in flatten(tracked_config(config)).items() if k not in known]
        for start in range(0, len(params), self.max_params):
            self.client.log_batch(run_id, params=params[start : start + self.max_params])
        self.run_id = run_id
        self.state = {"id": run_id}
        self.where = f"experiment {project}, run {run_id} at {self.client.tracking_uri}"

    def log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_samples(self, rows: list[list[Any]], step: int) -> None:
        table = {column: [row[i] for row in rows] for i, column in enumerate(SAMPLE_COLUMNS)}
        self.client.log_table(self.run_id, data=table, artifact_file=f"eval_samples/iteration-{step}.json")

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


BACKENDS: dict[str, type[Backend]] = {
    "tensorboard": TensorBoardBackend,
    "wandb": WandbBackend,
    "trackio": TrackioBackend,
    "mlflow": MlflowBackend,
}


def run_name(config: TrainConfig, run: RunDir) -> str:
    return config.tracking.run_name or run.root.name


@contextlib.contextmanager
def quiet() -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class Trackers:
    """The run's open backends. ``done`` holds, per append-only backend, the last step of each stream it had
    logged before this process started: a resumed run skips those steps (see the module docstring)."""

    def __init__(self, backends: list[Backend], path: Path | None, done: dict[str, dict[str, int]]) -> None:
        self.backends = backends
        self.path = path
        self.done = done
        self.marks = {b.name: dict(done.get(b.name, {})) for b in backends}

    @classmethod
    def none(cls) -> Trackers:
        """No trackers (the default, and every process but the main one)."""
        return cls([], None, {})

    @classmethod
    def open(cls, config: TrainConfig, run: RunDir, resumed_from: int | None) -> Trackers:
        """Start (or, with ``resumed_from``, the checkpoint's iteration, continue) every backend of
        ``tracking.report_to``."""
        names = config.tracking.report_to
        if not names:
            return cls.none()
        check_installed(names)
        path = run.root / STATE_FILE
        saved = read_state(path) if resumed_from is not None else {}
        backends: list[Backend] = []
        try:
            for name in names:
                backends.append(BACKENDS[name](config, run, resumed_from, saved.get(name, {})))
        except BaseException:
            cls(backends, None, {}).close(failed=True)
            raise
        done = {
            b.name: {s: int(saved[b.name][s]) for s in STREAMS if s in saved.get(b.name, {})}
            for b in backends
            if not b.purges
        }
        trackers = cls(backends, path, done)
        trackers.save()
        return trackers

    def describe(self) -> str:
        return "; ".join(f"{b.name}: {b.where}" for b in self.backends)

    def skips(self, backend: Backend, stream: str, step: int) -> bool:
        return step <= self.done.get(backend.name, {}).get(stream, -1)

    def log_record(self, record: dict[str, Any]) -> None:
        """One record of metrics.jsonl (a training iteration's, or an evaluation's) at its iteration."""
        stream = record.get("kind")
        if not self.backends or stream not in STREAMS:
            return
        step, values = int(record["iteration"]), scalars(record)
        for backend in self.backends:
            if not self.skips(backend, stream, step):
                backend.log(values, step)
                self.marks[backend.name][stream] = max(step, self.marks[backend.name].get(stream, -1))
        self.save()

    def log_samples(self, iteration: int, records: list[dict[str, Any]], limit: int) -> None:
        """An evaluation's held-out generations, as a table (after its metrics, at the same step)."""
        rows = sample_rows(iteration, records, limit)
        if not rows:
            return
        for backend in self.backends:
            if not self.skips(backend, "eval", iteration):
                backend.log_samples(rows, iteration)

    def close(self, failed: bool = False) -> None:
        """Finish every run; after a failure (``failed``) a tracker that cannot finish cleanly is left as it is,
        so that the error that stopped training is the one reported."""
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.finish(failed)
            except Exception:
                if not failed:
                    raise

    def save(self) -> None:
        """Write trackers.json: each backend's run id and the last step of each stream it logged."""
        if self.path is None or not self.backends:
            return
        state = {b.name: {**b.state, **self.marks[b.name]} for b in self.backends}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def read_state(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); delete it to start new tracker runs") from None
    return state if isinstance(state, dict) else {}
