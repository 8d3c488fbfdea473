"""The offline sentiment task: deterministic, disjoint, varied and mostly neutral prompts."""

from __future__ import annotations

import importlib.util
import statistics

import pytest

from lmgym.data.sample import Sample
from lmgym.data.task import Task
from lmgym.data.tasks.sentiment import MAX_WORDS, MIN_WORDS, build_prompts, sentiment_task
from lmgym.rewards.sentiment import VaderSentiment


@pytest.fixture(scope="module")
def task() -> Task:
    return sentiment_task()


def test_same_seed_same_samples_and_different_seed_differs(task: Task) -> None:
    again = sentiment_task(seed=0)
    assert task.splits == again.splits
    other = sentiment_task(seed=1)
    assert [s.prompt for s in other.splits["train"]] != [s.prompt for s in task.splits["train"]]
    assert build_prompts(7, 50) == build_prompts(7, 50)
    assert build_prompts(7, 50) != build_prompts(8, 50)


def test_split_sizes_disjoint_and_ids_unique(task: Task) -> None:
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 600, "val": 100, "test": 100}
    texts = {split: {s.prompt for s in samples} for split, samples in task.splits.items()}
    assert {k: len(v) for k, v in texts.items()} == {"train": 600, "val": 100, "test": 100}  # no repeats within
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    ids = [s.id for samples in task.splits.values() for s in samples]
    assert len(ids) == len(set(ids))
    assert task.splits["train"][42].id == "sentiment-train-00042"
    assert task.splits["test"][0].id == "sentiment-test-00000"

    small = sentiment_task(seed=3, n_train=5, n_val=2, n_test=1)
    assert [len(small.split(k)) for k in ("train", "val", "test")] == [5, 2, 1]


def test_samples_are_well_formed(task: Task) -> None:
    for samples in task.splits.values():
        for s in samples:
            assert isinstance(s, Sample)
            assert isinstance(s.prompt, str) and s.prompt.strip() == s.prompt and s.prompt
            assert MIN_WORDS <= len(s.prompt.split()) <= MAX_WORDS
            assert s.references == ()
            assert s.meta["title"] and s.meta["title"] in s.prompt
            assert s.meta["genre"]
            assert not s.prompt.endswith(".")  # stops mid-thought
    prompts = build_prompts(11, 40)
    assert len(prompts) == len(set(prompts)) == 40


def test_prompts_are_mostly_neutral(task: Task) -> None:
    prompts = [s.prompt for s in task.splits["train"]]
    scores = VaderSentiment().score(prompts, prompts, [()] * len(prompts), [{}] * len(prompts))
    magnitudes = [abs(x) for x in scores]
    assert statistics.mean(magnitudes) < 0.25
    assert sum(m < 0.3 for m in magnitudes) / len(magnitudes) >= 0.6


def test_variety(task: Task) -> None:
    train = task.splits["train"]
    assert len({s.meta["title"] for s in train}) >= 50
    assert len({s.meta["framing"] for s in train}) >= 8
    assert len({s.meta["genre"] for s in train}) >= 10


def test_task_settings_and_bad_sizes(task: Task) -> None:
    assert task.name == "sentiment"
    assert task.reward.name == "vader_sentiment"
    assert task.metrics == ("reward", "perplexity", "distinct")
    assert task.generation == {"max_new_tokens": 24}
    for arg in ("n_train", "n_val", "n_test"):
        with pytest.raises(ValueError, match=arg):
            sentiment_task(**{arg: 0})


@pytest.mark.skipif(
    importlib.util.find_spec("lmgym.data.tasks.toy") is None, reason="lmgym.data.tasks.toy is not written yet"
)
def test_registry_loads_sentiment() -> None:
    from lmgym.data.registry import available_tasks, load_task

    t = load_task("sentiment", n_train=10, n_val=3, n_test=3)
    assert t.reward.name == "vader_sentiment"
    assert len(t.split("train")) == 10
    assert "sentiment" in available_tasks()
