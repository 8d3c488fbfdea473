"""`lmgym bench grue`: the quick matrix fills every cell, resumes, reports failures; configs all load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmgym.bench.grue import ALGOS, EXTRA_TASKS, GRUE_TASKS, GrueBench, default_configs_dir, parse_list, run_grue
from lmgym.bench.grue import rl_vs_supervised as verdict
from lmgym.config import load_config


def test_quick_bench_fills_every_cell_and_resumes(tmp_path):
    out = tmp_path / "grue"
    board = run_grue(out, tasks="imdb,dailydialog", algos="sft,sft+ppo", quick=True, overrides=["iterations=1"])
    on_disk = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    assert on_disk["tasks"].keys() == {"imdb", "dailydialog"}
    for task, row in on_disk["tasks"].items():
        assert row.keys() == {"sft", "sft+ppo"}
        for algo, cell in row.items():
            assert "error" not in cell, (task, algo, cell.get("error"))
            assert cell["num_prompts"] == 4
            assert cell["iterations"] == 1  # read from the cell's run, as trained
            for key in ("reward", "perplexity", "distinct-1"):
                assert math.isfinite(cell["scores"][key]), (task, algo, key)
        # A trained cell keeps final/ and its logs; its checkpoints (for an interrupted cell) are gone.
        assert (out / "runs" / f"{task}__sft+ppo" / "final").is_dir()
        assert not (out / "runs" / f"{task}__sft+ppo" / "checkpoints").exists()
        # The RL cell started from the supervised cell's final model.
        assert row["sft+ppo"]["model"] == str(out / "runs" / f"{task}__sft" / "final")
        # The verdict compares the two rewards in the table.
        v = on_disk["rl_vs_supervised"][task]
        assert v["best_rl"] == "sft+ppo"
        rl_reward, sft_reward = row["sft+ppo"]["scores"]["reward"], row["sft"]["scores"]["reward"]
        assert v["verdict"] == ("yes" if rl_reward > sft_reward else "tie" if rl_reward == sft_reward else "no")
    assert 0 <= on_disk["tasks"]["dailydialog"]["sft"]["scores"]["intent_accuracy"] <= 1
    assert (out / "plots" / "imdb_reward_vs_perplexity.png").exists()
    assert (out / "plots" / "dailydialog_reward_curves.png").exists()  # the sft+ppo run logs rewards
    markdown = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "## imdb" in markdown and "## dailydialog" in markdown and "| sft+ppo |" in markdown
    # The matrix of rewards: one row per task, the best of each row in bold.
    matrix = markdown.split("Task reward (perplexity under the original model) of every cell:")[1]
    row = next(line for line in matrix.splitlines() if line.startswith("| imdb | "))
    best = max(on_disk["tasks"]["imdb"][a]["scores"]["reward"] for a in ("sft", "sft+ppo"))
    assert f"**{best:.3f}**" in row
    assert board["tasks"] == on_disk["tasks"]

    # A second run keeps every finished cell (nothing is retrained or rescored).
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    again = run_grue(out, tasks="imdb,dailydialog", algos="sft,sft+ppo", quick=True, overrides=["iterations=1"])
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    assert again["tasks"] == on_disk["tasks"]
    # Other settings into the same folder are refused rather than mixed with the kept cells.
    with pytest.raises(ValueError, match="holds a finished imdb × sft cell run with other settings"):
        run_grue(out, tasks="imdb", algos="sft", quick=True, overrides=["iterations=2"])


def test_failed_cell_is_reported_and_retried(tmp_path):
    configs = tmp_path / "configs"
    path = configs / "offline" / "imdb" / "zero-shot.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("task: imdb\nppo:\n  learning_rate: 1.0e-5\n", encoding="utf-8")
    bench = GrueBench(tmp_path / "out", ["imdb"], ["zero-shot"], quick=True, configs_dir=configs)
    board = bench.run()
    error = board["tasks"]["imdb"]["zero-shot"]["error"]
    assert "unknown config key 'ppo.learning_rate'" in error and "did you mean 'ppo.lr'" in error
    assert "failed: ConfigError" in (tmp_path / "out" / "leaderboard.md").read_text(encoding="utf-8")
    assert board["rl_vs_supervised"]["imdb"]["verdict"] == "n/a"

    path.write_text("task: imdb\n", encoding="utf-8")  # fixed: the next run retries the cell
    board = GrueBench(tmp_path / "out", ["imdb"], ["zero-shot"], quick=True, configs_dir=configs).run()
    cell = board["tasks"]["imdb"]["zero-shot"]
    assert "error" not in cell and 0 <= cell["scores"]["reward"] <= 1
    assert not (tmp_path / "out" / "cells" / "imdb__zero-shot.failed.json").exists()


def test_rl_vs_supervised_verdict():
    def cell(reward):
        return {"scores": {"reward": reward}}

    row = {"zero-shot": cell(0.9), "sft": cell(0.5), "ppo": cell(0.4), "sft+nlpo": cell(0.7), "nlpo": {"error": "x"}}
    assert verdict(row) == {"verdict": "yes", "best_rl": "sft+nlpo", "best_rl_reward": 0.7, "sft_reward": 0.5}
    row["sft"] = cell(0.8)
    assert verdict(row)["verdict"] == "no"
    row["sft"] = cell(0.7)
    assert verdict(row)["verdict"] == "tie"
    assert verdict({"sft": cell(0.5), "ppo": {"error": "boom"}})["verdict"] == "n/a"


def test_bad_lists_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--tasks: unknown tasks \['imbd'\]"):
        parse_list("imdb,imbd", GRUE_TASKS, GRUE_TASKS, "tasks")
    assert parse_list(None, ALGOS, ALGOS, "algos") == list(ALGOS)
    with pytest.raises(ValueError, match="--profile must be one of offline, hub"):
        GrueBench(tmp_path, ["imdb"], ["ppo"], profile="cloud")
    with pytest.raises(ValueError, match="--budget must be a positive"):
        GrueBench(tmp_path, ["imdb"], ["ppo"], budget=0)
    bench = GrueBench(tmp_path, ["imdb"], ["ppo"], configs_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no config for imdb × ppo: .*nowhere/offline/imdb/ppo.yaml"):
        bench.config(bench.cells()[0])


@pytest.mark.parametrize("profile", ["offline", "hub"])
def test_a_valid_config_for_every_task_and_algorithm(profile):
    root: Path = default_configs_dir() / profile
    for task in GRUE_TASKS + EXTRA_TASKS:
        for algo in ALGOS:
            config = load_config(root / task / f"{algo}.yaml")
            assert config.task == task
            expected = "sft" if algo == "sft" else algo.removeprefix("sft+") if algo != "zero-shot" else config.algo
            assert config.algo == expected
    imdb = load_config(root / "imdb" / "nlpo.yaml")
    if profile == "hub":  # GRUE's published IMDB settings
        assert imdb.model.name == "lvwerra/gpt2-imdb" and imdb.generation.max_new_tokens == 48
        assert (imdb.nlpo.lr, imdb.kl.coef, imdb.kl.target) == (1e-6, 0.1, 0.1)
        assert (imdb.nlpo.mask_top_p, imdb.nlpo.mask_update_every) == (0.9, 5)
    else:
        assert imdb.model.name == "smollm2-135m-instruct" and imdb.task_args["source"] == "offline"
