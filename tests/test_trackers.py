"""Experiment trackers (tracking.report_to), read back from what each backend wrote: every training scalar at
step = iteration, the evaluations, the config and the samples table; and a run killed after a checkpoint and
resumed continues the same tracker runs with each step logged once."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from lmgym.api import train
from lmgym.config import load_config
from lmgym.errors import MissingPackageError, UserCodeError
from lmgym.trackers import PACKAGES, check_installed, flatten, tracked_config

ROOT = Path(__file__).resolve().parents[1]
# Iterations 1-3 run, a checkpoint after 2, a crash after 3 is logged; the resume redoes 3 and trains 4.
BASE = [
    "task=toy",
    "model=tiny",
    "threads=1",
    "rollout.batch_size=4",
    "ppo.minibatch_size=4",
    "ppo.epochs=1",
    "eval.num_prompts=4",
    "checkpoint.every=2",
    "tracking.samples=2",
]
TRAIN_STEPS, EVAL_STEPS = [1, 2, 3, 4], [0, 4]


class Crash:
    """Kills the run after iteration 3 is logged (the newest checkpoint is iteration 2's)."""

    def on_iteration_end(self, iteration: int, metrics: dict, trainer: object) -> None:
        if iteration == 3:
            raise RuntimeError("killed")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def crash_and_resume(root: Path, *extra: str) -> Path:
    settings = [*BASE, f"run_dir={root}", "name=run", *extra]
    with pytest.raises(UserCodeError, match="killed"):
        train(None, [*settings, "iterations=4"], callbacks=[Crash()], console=quiet())
    result = train(None, [*settings, "iterations=4"], resume=True, console=quiet())
    assert [r["iteration"] for r in result.history] == [3, 4]
    return result.run_dir


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def train_records(run: Path) -> dict[int, dict]:
    return {r["iteration"]: r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One crashed and resumed run logging to TensorBoard, W&B (offline) and MLflow (a local file store)."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(root / "wandb-dir"))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use a folder as its store
        (root / "wandb-dir").mkdir()
        return crash_and_resume(
            root,
            "tracking.report_to=[tensorboard, wandb, mlflow]",
            f"tracking.mlflow_uri={(root / 'mlruns').as_uri()}",
        )


def test_tensorboard_has_each_step_once_after_a_crash_and_resume(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert len(list((tracked / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the crashed and resumed writers
    records = train_records(tracked)
    for tag in ("reward/task", "kl", "kl_coef", "loss/policy", "time/generate"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in logged] == TRAIN_STEPS, tag  # 3 was logged twice and purged once
        assert [value for _, value in logged] == pytest.approx([records[i][tag] for i in TRAIN_STEPS], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/reward")] == EVAL_STEPS
    assert "eval/distinct-1" in events.Tags()["scalars"]
    assert [e.step for e in events.Tensors("eval/samples/text_summary")] == EVAL_STEPS
    table = events.Tensors("eval/samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    final = [s for s in read_jsonl(tracked / "samples.jsonl") if s.get("final")]
    assert table.startswith("| iteration | prompt | generation | reward |")
    assert table.count("\n| 4 |") == 2 and f"{final[0]['reward']}" in table
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"ppo.clip_range" in hparams["_hparams_/session_start_info"]


def wandb_records(path: Path):
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks = path.read_bytes(), 32768, 7, b""  # 7: the file's own header, ":W&B" and version
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_continues_the_same_run_without_repeating_a_step(tracked: Path) -> None:
    files = sorted((tracked.parent / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    run_id = json.loads((tracked / "trackers.json").read_text())["wandb"]["id"]
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)  # one W&B run, two sessions
    steps: Counter[tuple[str, int]] = Counter()
    values: dict[tuple[str, int], float] = {}
    config = ""
    for path in files:
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                step = record.history.step.num
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    steps[key, step] += 1
                    values[key, step] = item.value_json
            elif record.WhichOneof("record_type") in ("run", "config"):
                config += str(record)
    for key in ("reward/task", "kl", "loss/value"):
        assert sorted(s for k, s in steps if k == key) == TRAIN_STEPS, key
        assert all(steps[key, s] == 1 for s in TRAIN_STEPS), key
    records = train_records(tracked)
    assert [float(values["reward/task", s]) for s in TRAIN_STEPS] == pytest.approx(
        [records[s]["reward/task"] for s in TRAIN_STEPS]
    )
    assert sorted(s for k, s in steps if k == "eval/reward") == EVAL_STEPS
    assert sorted(s for k, s in steps if k == "eval/samples/_type") == EVAL_STEPS  # a wandb.Table per evaluation
    assert "clip_range" in config and '\\"toy\\"' in config  # the resolved config


def test_mlflow_continues_the_same_run_without_repeating_a_step(tracked: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked.parent / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("lmgym").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "run"
    run_id = runs[0].info.run_id
    assert json.loads((tracked / "trackers.json").read_text())["mlflow"]["id"] == run_id
    records = train_records(tracked)
    for key in ("reward/task", "kl", "approx_kl"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == TRAIN_STEPS, key
        assert [v for _, v in history] == pytest.approx([records[s][key] for s in TRAIN_STEPS])
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/reward")) == EVAL_STEPS
    params = runs[0].data.params
    assert params["algo"] == "ppo" and params["ppo.minibatch_size"] == "4" and "grpo.k" not in params
    tables = sorted(a.path for a in client.list_artifacts(run_id, "eval_samples"))
    assert tables == ["eval_samples/iteration-0.json", "eval_samples/iteration-4.json"]


TRACKIO_SCRIPT = """
import io, json, sys
from rich.console import Console
from lmgym.api import train
from lmgym.errors import UserCodeError
sys.path.insert(0, {tests!r})
from test_trackers import BASE, Crash

settings = [*BASE, "run_dir={root}", "name=run", "iterations=4", "tracking.report_to=trackio"]
try:
    train(None, settings, callbacks=[Crash()], console=Console(file=io.StringIO()))
except UserCodeError:
    pass
train(None, settings, resume=True, console=Console(file=io.StringIO()))
from trackio.sqlite_storage import SQLiteStorage
print("LOGS", json.dumps(SQLiteStorage.get_logs("lmgym", "run"), default=str))
"""


def test_trackio_continues_the_same_run_without_repeating_a_step(tmp_path: Path) -> None:
    """In a process of its own: trackio reads $TRACKIO_DIR once, when it is first imported."""
    script = TRACKIO_SCRIPT.format(tests=str(ROOT / "tests"), root=str(tmp_path))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    logs = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("LOGS "))[5:])
    assert (tmp_path / "trackio" / "lmgym.db").exists()
    train_steps = [log["step"] for log in logs if "reward/task" in log]
    assert sorted(train_steps) == TRAIN_STEPS
    records = train_records(tmp_path / "run")
    assert [log["reward/task"] for log in sorted(logs, key=lambda x: x["step"]) if "reward/task" in log] == (
        pytest.approx([records[s]["reward/task"] for s in TRAIN_STEPS])
    )
    assert sorted(log["step"] for log in logs if "eval/reward" in log) == EVAL_STEPS
    assert sorted(log["step"] for log in logs if "eval/samples" in log) == EVAL_STEPS


def test_unknown_backend_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match=r"tracking\.report_to\.0: Input should be 'tensorboard', 'wandb', 'trackio'"):
        load_config(overrides=["tracking.report_to=[tensorbaord]"])
    assert load_config(overrides=["tracking.report_to=wandb"]).tracking.report_to == ["wandb"]


def test_missing_package_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"wandb is not installed: pip install 'lmgym\[tracking\]'"):
        check_installed(["tensorboard", "wandb"])
    with pytest.raises(MissingPackageError, match="lmgym"):
        train(None, [*BASE, f"run_dir={tmp_path}", "name=x", "tracking.report_to=wandb"], console=quiet())
    assert not (tmp_path / "x").exists()  # refused before anything was written
    assert set(PACKAGES) == {"tensorboard", "wandb", "trackio", "mlflow"}


def test_the_config_as_hyperparameters_leaves_out_other_algorithms() -> None:
    config = load_config(overrides=["algo=grpo", "task_args={n: 3}"])
    flat = flatten(tracked_config(config))
    assert flat["grpo.k"] == 4 and flat["task_args.n"] == 3 and flat["eval.metrics"] == "null"
    assert not any(k.startswith(("ppo.", "dpo.", "sft.")) for k in flat)


def test_resume_may_report_to_other_trackers(tmp_path: Path) -> None:
    """An unnamed run is found by --resume with other tracking settings (they change no number of the run)."""
    from lmgym.tracking import RunDir, same_config_runs

    RunDir(tmp_path / "toy-ppo-1").create(load_config(overrides=BASE))
    assert same_config_runs(tmp_path, load_config(overrides=[*BASE, "tracking.report_to=tensorboard"]))
    assert not same_config_runs(tmp_path, load_config(overrides=[*BASE, "ppo.epochs=2"]))
