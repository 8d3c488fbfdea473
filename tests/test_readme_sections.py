"""The README's "Runs on disk" and "Tracking" sections and its eval.metrics example say what lmgym does: every
config shown is valid, and a run holds every file the section lists. (The tour, callbacks included, is run by
tests/test_readme.py; the behaviour behind each sentence by test_trackers, test_run_logs, test_model_card and
test_callbacks.)"""

from __future__ import annotations

import io
import re
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from rich.console import Console

from lmgym.api import train
from lmgym.config import TrainConfig
from lmgym.rewards.catalog import metric_infos

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(title)
    following = re.search(r"^##+ ", README[start + len(title) :], re.M)
    return README[start : start + len(title) + (following.start() if following else len(README))]


def yaml_blocks(text: str) -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_every_tracking_config_of_the_readme_is_valid() -> None:
    blocks = yaml_blocks(section("## Tracking"))
    assert [b["tracking"]["report_to"] for b in blocks] == [["tensorboard"], ["wandb"], ["trackio"], ["mlflow"]]
    for block in blocks:
        TrainConfig.model_validate(block)


def test_the_eval_metrics_example_names_registered_metrics() -> None:
    (block,) = [b for b in yaml_blocks(section("### Rewards and metrics")) if "eval" in b]
    assert set(TrainConfig.model_validate(block).eval.metrics) <= set(metric_infos())


def test_a_run_holds_every_file_runs_on_disk_lists(tmp_path: Path) -> None:
    text = section("### Runs on disk")
    listed = ["config.yaml", "metrics.jsonl", "samples.jsonl", "rollouts.jsonl", "plots/", "checkpoints/step-N/"]
    listed += ["tensorboard/", "trackers.json", "final/", "value_head.safetensors", "README.md"]
    assert all(f"`{name}`" in text for name in listed)
    settings = ["task=toy", "model=tiny", "threads=1", "iterations=1", "rollout.batch_size=4", "ppo.minibatch_size=4"]
    settings += [f"run_dir={tmp_path}", "name=r", "eval.num_prompts=4", "rollout.log_samples_every=1"]
    settings += ["tracking.report_to=[tensorboard]"]
    run = train(None, settings, console=Console(file=io.StringIO())).run_dir
    for name in ["config.yaml", "metrics.jsonl", "samples.jsonl", "rollouts.jsonl", "plots", "tensorboard"]:
        assert (run / name).exists(), name
    assert (run / "checkpoints" / "step-1").is_dir() and (run / "trackers.json").exists()
    assert (run / "final" / "value_head.safetensors").exists()
    assert ModelCard.load(run / "final" / "README.md").data.library_name == "lmgym"
