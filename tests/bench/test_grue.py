"""`lmgym bench grue`: the quick matrix fills every cell, resumes, reports failures; configs all load."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from lmgym.bench.grue import ALGOS, EXTRA_TASKS, GRUE_TASKS, GrueBench, default_configs_dir, parse_list, run_grue
from lmgym.bench.grue import rl_vs_supervised as verdict
from lmgym.bench.grue_stats import CellData, PerPrompt
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
        # The verdict is the paired bootstrap interval of the two rewards' difference, on the same prompts.
        v = on_disk["rl_vs_supervised"][task]
        assert v["best_rl"] == "sft+ppo"
        rl_reward, sft_reward = row["sft+ppo"]["scores"]["reward"], row["sft"]["scores"]["reward"]
        diff = v["difference"]
        assert diff["estimate"] == pytest.approx(rl_reward - sft_reward)
        low, high = diff["interval"]["low"], diff["interval"]["high"]
        assert low <= diff["interval"]["estimate"] <= high
        assert v["verdict"] == ("yes" if low > 0 else "no" if high < 0 else "within noise")
        # Each cell keeps its per-prompt values (for the bootstrap) and reports intervals with their widths.
        stored = json.loads((out / "cells" / f"{task}__sft+ppo.json").read_text(encoding="utf-8"))
        assert len(stored["per_prompt"]["ids"]) == len(stored["per_prompt"]["reward"]) == 4
        assert sum(stored["per_prompt"]["tokens"]) > 0 and len(stored["per_prompt"]["nll_sum"]) == 4
        assert stored["seed"] == 0 and stored["format"] == 2 and stored["curve"]
        for key in ("reward", "perplexity"):
            interval = row["sft+ppo"]["intervals"][key]
            assert interval["low"] <= row["sft+ppo"]["scores"][key] <= interval["high"]
            assert interval["width"] == pytest.approx(interval["high"] - interval["low"])
        assert "distinct-2" in row["sft+ppo"]["no_interval"]  # a corpus statistic
    assert 0 <= on_disk["tasks"]["dailydialog"]["sft"]["scores"]["intent_accuracy"] <= 1
    assert (out / "plots" / "imdb_reward_vs_perplexity.png").exists()
    assert (out / "plots" / "dailydialog_reward_curves.png").exists()  # the sft+ppo run logs rewards
    markdown = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "## imdb" in markdown and "## dailydialog" in markdown and "| sft+ppo |" in markdown
    assert "| sft+ppo | reward |" in markdown and "CI width" in markdown and "GRUE's findings" in markdown
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
    def cell(algo, reward, spread=0.0):
        # 64 prompts, the same for every cell; `spread` adds prompt-to-prompt noise around the mean reward.
        values = reward + spread * np.sin(np.arange(64) * 1.7)
        per_prompt = PerPrompt(tuple(f"p{i}" for i in range(64)), {"reward": values[None, :]})
        return CellData(algo, {"reward": float(values.mean())}, per_prompt)

    row = {"sft": cell("sft", 0.5, 0.1), "ppo": cell("ppo", 0.4, 0.1), "sft+nlpo": cell("sft+nlpo", 0.7, 0.1)}
    v = verdict(row)
    assert (v["verdict"], v["best_rl"]) == ("yes", "sft+nlpo")
    assert v["best_rl_reward"] == pytest.approx(0.7, abs=0.01) and v["sft_reward"] == pytest.approx(0.5, abs=0.01)
    row["sft"] = cell("sft", 0.8, 0.1)
    assert verdict(row)["verdict"] == "no"
    row["sft"] = cell("sft", 0.7, 0.1)  # the same per-prompt rewards: no difference to see
    assert verdict(row)["verdict"] == "within noise"
    row["sft"] = CellData("sft", {"reward": 0.5})  # a result without per-prompt values
    assert verdict(row)["verdict"] == "no interval"
    assert verdict({"sft": cell("sft", 0.5)})["verdict"] == "n/a"


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


def test_seeds_equal_iterations_and_report_from_result_files_alone(tmp_path):
    out = tmp_path / "grue"
    options = {"tasks": "imdb", "algos": "ppo,nlpo", "quick": True, "overrides": ["iterations=1"], "budget": 600}
    board = run_grue(out, **options, seeds=2, equal_iterations=True)
    cells = out / "cells"
    expected = [f"imdb__{a}{s}.json" for a in ("ppo", "nlpo", "nlpo@ppo-iters") for s in ("", "__seed1")]
    assert sorted(p.name for p in cells.glob("*.json")) == sorted(expected)
    row = board["tasks"]["imdb"]
    for algo in ("ppo", "nlpo", "nlpo@ppo-iters"):
        entry = row[algo]
        assert entry["seeds"] == [0, 1] and "error" not in entry
        rewards = [entry["per_seed"][s]["scores"]["reward"] for s in ("0", "1")]
        assert entry["scores"]["reward"] == pytest.approx(statistics.fmean(rewards))
        assert entry["std"]["reward"] == pytest.approx(statistics.stdev(rewards))
    # Seed s trains with the config's seed s; NLPO at equal iterations runs PPO's count without the time cap.
    assert load_config(out / "runs" / "imdb__ppo__seed1" / "config.yaml").seed == 1
    nlpo, ppo, equal = (
        json.loads((cells / f"imdb__{a}__seed1.json").read_text()) for a in ("nlpo", "ppo", "nlpo@ppo-iters")
    )
    assert (nlpo["max_train_seconds"], equal["max_train_seconds"]) == (600, None)
    assert equal["iterations"] == ppo["iterations"] == 1
    assert board["findings"]["b_wallclock"]["tasks"]["imdb"]["verdict"] != "n/a"
    assert board["findings"]["b_iterations"]["tasks"]["imdb"]["verdict"] != "n/a"
    markdown = (out / "leaderboard.md").read_text(encoding="utf-8")
    matrix = markdown.split("Task reward (perplexity under the original model) of every cell:")[1]
    matrix_row = next(line for line in matrix.splitlines() if line.startswith("| imdb | "))
    assert matrix_row.count(" ± ") == 3  # mean ± std over the two seeds of each cell
    assert (out / "plots" / "imdb_reward_curves.png").exists()

    # --report rebuilds the same leaderboard from the result files alone: no runs, samples or old leaderboard.
    for folder in ("runs", "samples", "plots"):
        shutil.rmtree(out / folder)
    (out / "leaderboard.json").unlink()
    (out / "leaderboard.md").unlink()
    again = run_grue(out, report=True)
    assert again == board
    assert (out / "leaderboard.md").read_text(encoding="utf-8") == markdown
    assert (out / "plots" / "imdb_reward_curves.png").exists()  # the curves are in the result files


def test_report_on_old_format_results_names_the_cells_without_per_prompt_data(tmp_path):
    # The first runner's leaderboard.json: point scores only (no cells/ folder, no per-prompt values).
    def old_cell(algo, reward):
        scores = {"reward": reward, "perplexity": 40.0, "distinct-1": 0.6}
        return {
            "task": "imdb",
            "algo": algo,
            "iterations": 6,
            "train_seconds": 120.0,
            "num_prompts": 32,
            "scores": scores,
        }

    old = {
        "profile": "offline",
        "quick": False,
        "budget_seconds": 120,
        "overrides": [],
        "tasks": {"imdb": {"zero-shot": old_cell("zero-shot", 0.498), "sft": old_cell("sft", 0.495)}},
        "rl_vs_supervised": {"imdb": {"verdict": "n/a"}},
        "plots": {},
    }
    old["tasks"]["imdb"]["ppo"] = old_cell("ppo", 0.515)
    out = tmp_path / "old"
    out.mkdir()
    (out / "leaderboard.json").write_text(json.dumps(old), encoding="utf-8")
    board = run_grue(out, report=True)
    assert board["cells_without_per_prompt_data"] == ["imdb × zero-shot", "imdb × sft", "imdb × ppo"]
    assert board["tasks"]["imdb"]["ppo"]["scores"]["reward"] == 0.515  # the point values are kept
    assert board["tasks"]["imdb"]["ppo"]["intervals"] == {}
    assert board["rl_vs_supervised"]["imdb"]["verdict"] == "no interval"
    assert board["findings"]["d"]["tasks"]["imdb"]["verdict"] == "inconclusive"
    markdown = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "Cells without per-prompt data" in markdown and "imdb × ppo" in markdown
    # The new leaderboard.json keeps the old cells, so that the next --report finds them again.
    assert run_grue(out, report=True)["tasks"] == board["tasks"]

    # A run refuses a result file of the first runner rather than mixing it with new cells.
    (out / "cells").mkdir()
    (out / "cells" / "imdb__zero-shot.json").write_text(json.dumps(old_cell("zero-shot", 0.5)), encoding="utf-8")
    with pytest.raises(ValueError, match="written by an older lmgym"):
        run_grue(out, tasks="imdb", algos="zero-shot", quick=True)


def test_offline_profile_scores_enough_prompts():
    from lmgym.data.registry import load_task

    short = {}
    for task in GRUE_TASKS + EXTRA_TASKS:
        config = load_config(default_configs_dir() / "offline" / task / "ppo.yaml")
        assert config.eval.num_prompts >= 128
        held_out = len(load_task(task, **config.task_args).split(config.eval.split))
        if held_out < config.eval.num_prompts:
            short[task] = held_out
    # NarrativeQA's offline generator writes 30 test stories of three questions; its task module sets that.
    assert short == {"narrativeqa": 90}


def test_rescore_adds_a_metric_that_failed_from_the_stored_generations(tmp_path, monkeypatch):
    from lmgym.metrics.model_based import BERTScore

    out = tmp_path / "grue"
    compute = BERTScore.compute

    def broken(self, *args):
        raise RuntimeError("a bug since fixed")

    monkeypatch.setattr(BERTScore, "compute", broken)
    run_grue(out, tasks="commongen", algos="zero-shot", quick=True)
    path = out / "cells" / "commongen__zero-shot.json"
    before = json.loads(path.read_text(encoding="utf-8"))
    assert before["missing"]["bertscore"] == "failed: RuntimeError: a bug since fixed"
    assert "bertscore-f1" not in before["scores"]

    monkeypatch.setattr(BERTScore, "compute", compute)
    board = run_grue(out, tasks="commongen", algos="zero-shot", quick=True, rescore=True)
    after = json.loads(path.read_text(encoding="utf-8"))
    assert "bertscore" not in after["missing"] and "spice" in after["missing"]  # SPICE still cannot run here
    # Every stored value is kept; the metric is added with its per-prompt column, from the same generations.
    assert {k: v for k, v in after["scores"].items() if not k.startswith("bertscore")} == before["scores"]
    assert {k: v for k, v in after["per_prompt"].items() if not k.startswith("bertscore")} == before["per_prompt"]
    samples = [json.loads(line) for line in (out / "samples" / "commongen__zero-shot.jsonl").read_text().splitlines()]
    direct = BERTScore()(
        [""] * len(samples), [s["generation"] for s in samples], [s["references"] for s in samples], [{}] * len(samples)
    )
    assert after["per_prompt"]["bertscore-f1"] == pytest.approx(direct["bertscore-f1"].per_sample, abs=1e-6)
    assert board["tasks"]["commongen"]["zero-shot"]["scores"]["bertscore-f1"] == after["scores"]["bertscore-f1"]

    # Without the stored generations a failed metric is left as it is, and the cell is named.
    monkeypatch.setattr(BERTScore, "compute", broken)
    path.unlink()
    run_grue(out, tasks="commongen", algos="zero-shot", quick=True)
    monkeypatch.setattr(BERTScore, "compute", compute)
    (out / "samples" / "commongen__zero-shot.jsonl").unlink()
    bench = GrueBench(out, ["commongen"], ["zero-shot"], quick=True)
    assert "no stored generations" in bench.rescore()["commongen__zero-shot"]
    assert "bertscore" in json.loads(path.read_text(encoding="utf-8"))["missing"]
