"""The arithmetic task: seeded, disjoint splits, levels with the right number of steps and correct answers."""

from __future__ import annotations

import json
import operator
import re
from collections import Counter
from pathlib import Path

import pytest

from lmgym.api import train
from lmgym.data.registry import available_tasks, load_task
from lmgym.data.task import Task
from lmgym.data.tasks.arithmetic import INSTRUCTION, MAX_NEW_TOKENS, MAX_VALUE, arithmetic_task
from lmgym.errors import InputError, WrongTypeError

SMALL = {"n_train": 300, "n_val": 60, "n_test": 90}


def exact_div(a: int, b: int) -> int:
    assert a % b == 0, f"{a} / {b} is not exact"
    return a // b


# Independent of the generator's own table.
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": exact_div}


@pytest.fixture(scope="module")
def task() -> Task:
    return arithmetic_task(seed=0, **SMALL)


def all_samples(task: Task) -> list:
    return [s for samples in task.splits.values() for s in samples]


def test_registered_and_loadable() -> None:
    assert "arithmetic" in available_tasks()
    loaded = load_task("arithmetic", levels=[2], n_train=5, n_val=2, n_test=3)
    assert [len(loaded.split(k)) for k in ("train", "val", "test")] == [5, 2, 3]
    assert {s.meta["level"] for s in all_samples(loaded)} == {2}


def test_same_seed_same_samples_and_different_seed_differs(task: Task) -> None:
    assert arithmetic_task(seed=0, **SMALL).splits == task.splits
    other = arithmetic_task(seed=1, **SMALL)
    mine, theirs = [s.prompt for s in task.split("train")], [s.prompt for s in other.split("train")]
    assert mine != theirs
    assert len(set(mine) & set(theirs)) < len(mine) // 10


def test_no_prompt_repeats_within_or_across_splits(task: Task) -> None:
    prompts = [s.prompt for s in all_samples(task)]
    assert len(prompts) == len(set(prompts)) == sum(SMALL.values())
    ids = [s.id for s in all_samples(task)]
    assert len(ids) == len(set(ids)) and task.split("test")[0].id == "arithmetic-test-00000"


def test_steps_match_level_and_answers_recompute(task: Task) -> None:
    for s in all_samples(task):
        steps, level = s.meta["steps"], s.meta["level"]
        assert len(steps) == level
        value = steps[0]["left"]
        for step in steps:
            assert step["left"] == value  # each step starts from the previous result
            value = OPS[step["op"]](step["left"], step["right"])
            assert step["result"] == value
            assert 1 <= value <= MAX_VALUE
        assert s.meta["answer"] == value and isinstance(value, int)
        assert s.references == (str(value),)


def test_prompts_state_every_number_and_end_with_the_instruction(task: Task) -> None:
    for s in all_samples(task):
        assert s.prompt.endswith("?\n" + INSTRUCTION)
        numbers = re.findall(r"\d+", s.prompt.removesuffix(INSTRUCTION))
        steps = s.meta["steps"]
        stated = [steps[0]["left"]] + [step["right"] for step in steps]
        assert [int(n) for n in numbers] == stated, s.prompt  # in order, and nothing else
        assert s.meta["answer"] not in stated  # copying a number from the problem never scores


def test_levels_are_balanced_and_ops_varied(task: Task) -> None:
    for samples in task.splits.values():
        counts = Counter(s.meta["level"] for s in samples)
        assert set(counts) == {1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1
    ops = Counter(step["op"] for s in all_samples(task) for step in s.meta["steps"])
    assert set(ops) == set(OPS) and min(ops.values()) > 0.1 * sum(ops.values())
    only = arithmetic_task(levels=[1, 3], **SMALL)
    assert {s.meta["level"] for s in all_samples(only)} == {1, 3}
    assert len({s.prompt.split()[0] for s in all_samples(task)}) > 15  # varied names


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"levels": [4]}, InputError),
        ({"levels": []}, InputError),
        ({"levels": "12"}, WrongTypeError),
        ({"n_train": 0}, InputError),
        ({"max_new_tokens": 0}, InputError),
    ],
)
def test_bad_arguments(args: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        load_task("arithmetic", **args)


def test_task_reward_and_settings(task: Task) -> None:
    samples = task.split("test")[:3]
    right = [rf"Working... \boxed{{{s.meta['answer']}}}" for s in samples]
    wrong = [rf"\boxed{{{s.meta['answer'] + 1}}}" for s in samples]
    args = ([s.prompt for s in samples], [list(s.references) for s in samples], [dict(s.meta) for s in samples])
    assert task.reward(args[0], right, *args[1:]) == [1.0, 1.0, 1.0]
    assert task.reward(args[0], wrong, *args[1:]) == [0.0, 0.0, 0.0]
    assert task.metrics == ("reward", "math_answer")
    assert task.generation == {"max_new_tokens": MAX_NEW_TOKENS}
    assert arithmetic_task(max_new_tokens=64, **SMALL).generation == {"max_new_tokens": 64}


def test_the_recipe_config_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """configs/recipes/arithmetic-grpo.yaml (the README's recipe) with the tiny model swapped in, for one short
    iteration: the config is valid and its task, reward and GRPO settings train. (The tiny model has no chat
    template, so its prompts stay plain; the recipe's learning claim is measured on the bundled model.)"""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "arithmetic-grpo.yaml"
    result = train(
        recipe,
        [
            "model.name=tiny",
            "model.chat_template=none",
            "rollout.chat=false",
            "model.trainable_layers=null",
            "model.freeze_embeddings=null",
            "iterations=1",
            "rollout.batch_size=8",
            "grpo.k=4",
            "grpo.minibatch_size=8",
            "eval.num_prompts=4",
            "eval.batch_size=4",
            "task_args.max_new_tokens=8",
            "threads=1",
            f"run_dir={tmp_path}",
        ],
    )
    assert 0.0 <= result.before["reward"] <= 1.0 and 0.0 <= result.after["reward"] <= 1.0
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train_records] == [1]
    assert "eval/math_answer" in records[-1]


def test_ops_restrict_the_operations() -> None:
    task = arithmetic_task(seed=3, levels=[2, 3], ops="+-", n_train=60, n_val=8, n_test=8)
    used = {step["op"] for s in task.split("train") for step in s.meta["steps"]}
    assert used == {"+", "-"}
    for s in task.split("train"):  # the answer is the chain of the stored steps
        value = s.meta["steps"][0]["left"]
        for step in s.meta["steps"]:
            value = value + step["right"] if step["op"] == "+" else value - step["right"]
        assert value == s.meta["answer"] > 0
    with pytest.raises(InputError, match=r"task_args\.ops"):
        arithmetic_task(ops="+^")


def test_max_number_caps_every_count() -> None:
    task = arithmetic_task(seed=1, levels=[1, 2], ops="+-*/", max_number=30, n_train=80, n_val=8, n_test=8)
    steps = [st for s in task.split("train") for st in s.meta["steps"]]
    numbers = [n for st in steps for n in (st["left"], st["right"], st["result"])]
    assert max(numbers) <= 30 and min(numbers) >= 1
    with pytest.raises(InputError, match=r"task_args\.max_number"):
        arithmetic_task(max_number=5)
