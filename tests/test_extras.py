"""The dependency layout: what only some users need lives in extras (metrics, tracking, label, bench), `dev` holds
them all, and a base install (every extra's packages hidden) imports lmgym, trains with the default reward and
names the pip command of each metric it cannot run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Import names of the extras' packages (and what they pull in that lmgym could import by accident).
EXTRA_MODULES = [
    "bert_score", "mauve", "faiss", "sklearn", "pycocoevalcap", "pycocotools",  # metrics
    "tensorboard", "wandb", "trackio", "mlflow", "sqlalchemy", "alembic",  # tracking
    "starlette", "uvicorn", "jinja2", "statsmodels",  # label
    "trl", "playwright",  # bench, dev
]  # fmt: skip


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_heavy_packages_are_extras_and_dev_has_them_all() -> None:
    extras = PROJECT["optional-dependencies"]
    base = names(PROJECT["dependencies"])
    assert {"bert-score", "mauve-text", "faiss-cpu", "pycocoevalcap", "scikit-learn"} <= names(extras["metrics"])
    assert {"tensorboard", "wandb", "trackio", "mlflow-skinny"} <= names(extras["tracking"])
    for extra in ("metrics", "tracking", "label", "bench"):
        assert not names(extras[extra]) & base, extra
    assert "lmgym[metrics,tracking,label,bench]" in extras["dev"]


BASE_INSTALL = """
import sys
for name in {modules!r}:
    sys.modules[name] = None  # import fails and importlib.util.find_spec says "not installed", as without the extra
import lmgym
result = lmgym.train(overrides=["model=tiny", "iterations=1", "threads=1", "rollout.batch_size=4",
                                "ppo.minibatch_size=4", "eval.num_prompts=4", "run_dir={runs}", "name=base"])
print("REWARD", result.after["reward"])
from lmgym.rewards.catalog import availability, metric_infos
for name in ("bertscore", "mauve", "cider", "spice", "bleu"):
    print("METRIC", name, availability(metric_infos()[name]))
from lmgym.trackers import check_installed
try:
    check_installed(["tensorboard"])
except ImportError as err:
    print("TRACKING", err)
"""


def test_a_base_install_imports_trains_and_names_the_extras(tmp_path: Path) -> None:
    script = BASE_INSTALL.format(modules=EXTRA_MODULES, runs=tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("REWARD ") for line in lines)  # the default task's default reward (VADER) ran
    metrics = {line.split()[1]: line for line in lines if line.startswith("METRIC ")}
    for name in ("bertscore", "mauve", "cider"):
        assert "(False, \"`pip install 'lmgym[metrics]'`" in metrics[name], metrics[name]
    assert "(True, '')" in metrics["bleu"]  # the n-gram metrics stay in the base install
    assert "pip install 'lmgym[tracking]'" in next(line for line in lines if line.startswith("TRACKING "))
