"""final/README.md is a Hugging Face model card; `lmgym push` uploads final/, and offline refuses at once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from rich.console import Console
from typer.testing import CliRunner

from lmgym.algos.model_card import base_model, describe_reward
from lmgym.api import train
from lmgym.cli import app
from lmgym.config import load_config
from lmgym.errors import HubError

SETTINGS = ["task=toy", "model=tiny", "threads=1", "rollout.batch_size=4", "ppo.minibatch_size=4", "iterations=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("card")
    settings = [*SETTINGS, f"run_dir={root}", "name=card", "eval.num_prompts=4", "ppo.clip_range=0.3"]
    return train(None, settings, console=Console(file=io.StringIO())).run_dir


def test_final_holds_a_model_card_the_hub_library_reads(run: Path) -> None:
    card = ModelCard.load(run / "final" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "lmgym" and data["pipeline_tag"] == "text-generation"
    assert {"lmgym", "reinforcement-learning", "ppo", "task:toy"} <= set(data["tags"])
    assert "base_model" not in data  # the tiny test model has no hub id
    text = card.text
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    before, after = (r for r in evals if r["kind"] == "eval")
    row = f"| reward | {before['eval/reward']:.4f} | {after['eval/reward']:.4f} |"
    assert row in text and "| gen_len |" in text  # the before/after table
    assert "| ppo.clip_range | 0.3 |" in text and "| iterations trained | 2 |" in text
    assert "on the task `toy`: say 'the' as often as possible." in text
    assert "the task's default reward (`token_share[the]`)." in text
    assert "| max new tokens | 12 |" in text  # the toy task's horizon
    assert "![Training curves](reward_kl.png)" in text
    assert (run / "final" / "reward_kl.png").read_bytes() == (run / "plots" / "reward_kl.png").read_bytes()


def test_card_names_the_hub_id_of_the_base_model() -> None:
    assert base_model("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model("gpt2") == "gpt2" and base_model("google/flan-t5-small") == "google/flan-t5-small"
    assert base_model("tiny") is None and base_model("./models/mine") is None
    config = load_config(overrides=["reward.parts=[{name: meteor}, {name: bleu, weight: 0.5}]", "reward.clip=[0, 1]"])
    assert describe_reward(config.reward, "sum") == "1·meteor + 0.5·bleu, clipped to [0.0, 1.0]"


def test_push_offline_is_one_error_and_nothing_else(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def must_not_run(*args, **kwargs):
        raise AssertionError("the hub was called")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", must_not_run)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", must_not_run)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["push", str(run), "me/card", "--private"], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in result.output and "Nothing was uploaded" in result.output
    assert "Traceback" not in result.output
    from lmgym.publish import push_run

    with pytest.raises(HubError, match="cannot push"):
        push_run(run, "me/card")


def test_push_uploads_final_with_the_hub_client(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hub reachable (here: pretended), the repository is created and final/ uploaded, card included."""
    import huggingface_hub

    import lmgym.publish

    calls = []
    monkeypatch.setattr(lmgym.publish, "hub_offline", lambda: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append(("create", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: calls.append(("upload", k)))
    result = CliRunner().invoke(app, ["push", str(run), "me/card", "--private"])
    assert result.exit_code == 0, result.output
    assert calls[0] == ("create", ("me/card",), {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][1]["folder_path"] == str(run / "final") and calls[1][1]["repo_id"] == "me/card"
    unfinished = CliRunner().invoke(app, ["push", str(run / "plots"), "me/card"], env={"COLUMNS": "300"})
    assert unfinished.exit_code == 2 and "has no final/ model" in unfinished.output
