"""`task: dataset` (and its alias `task: file`): the user's own data from a save_to_disk folder, data files or
the hub, with column mapping, a prompt template, split names, a seeded hold-out and errors that name the
file, the row and the field."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pytest

import lmgym
from lmgym.data.hub import HubUnavailable
from lmgym.data.registry import available_tasks, load_task
from lmgym.data.rows import DatasetError
from lmgym.data.task import Task
from lmgym.errors import InputError, LmgymError, MissingFileError

QUESTIONS = {
    "question": [f"What is {i} plus {i}?" for i in range(12)],
    "answer": [str(2 * i) for i in range(12)],
    "level": [i % 3 + 1 for i in range(12)],
}


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network, and a hub/datasets cache of the test's own (the files' arrow caches land there too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prompts_rows(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"Write about item {i}", "references": [f"item {i}"], "n": i, **extra} for i in range(n)]


def all_samples(task: Task) -> list:
    return [s for split in ("train", "val", "test") for s in task.split(split)]


# --- the acceptance test: one training iteration from a DatasetDict and from a parquet file ---------


def train_one_iteration(tmp_path: Path, task_args: list[str]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def level_reward(prompts, generations, references, meta):
        for prompt, refs, m in zip(prompts, references, meta, strict=True):
            assert isinstance(m["level"], int) and not isinstance(m["level"], bool), m["level"]
            assert prompt == f"Question: {m['question']}\nAnswer:"
            assert refs == [str(2 * int(m["question"].split()[2]))]
        seen.extend(meta)
        return [float(m["level"]) for m in meta]

    overrides = [
        "task=dataset",
        *task_args,
        'task_args.prompt_template="Question: {question}\\nAnswer:"',
        "task_args.references_field=answer",
        "model=tiny",
        "iterations=1",
        "rollout.batch_size=4",
        "ppo.minibatch_size=4",
        "eval.num_prompts=2",
        "threads=1",
        f"run_dir={tmp_path / 'runs'}",
    ]
    result = lmgym.api.train(None, overrides=overrides, reward=level_reward)
    assert result.after["reward"] >= 1.0  # levels are 1..3, so the reward ran on real rows
    return seen


def test_trains_from_a_saved_dataset_dict_with_a_template(tmp_path: Path) -> None:
    rows = datasets.Dataset.from_dict(QUESTIONS)
    splits = datasets.DatasetDict(
        {"train": rows.select(range(8)), "validation": rows.select(range(8, 10)), "test": rows.select(range(10, 12))}
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    seen = train_one_iteration(tmp_path, [f"task_args.path={tmp_path / 'saved'}"])
    assert seen and all(type(m["level"]) is int for m in seen)


def test_trains_from_a_parquet_file_with_a_template(tmp_path: Path) -> None:
    datasets.Dataset.from_dict(QUESTIONS).to_parquet(str(tmp_path / "questions.parquet"))
    seen = train_one_iteration(tmp_path, [f"task_args.path={tmp_path / 'questions.parquet'}"])
    assert seen and all(type(m["level"]) is int for m in seen)


# --- file formats and column types --------------------------------------------------------------------------


def test_csv_columns_keep_their_types(tmp_path: Path) -> None:
    lines = ["prompt,level,score,tag"] + [f"Say {i},{i},{i / 2},t{i}" for i in range(10)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = load_task("dataset", path=str(tmp_path / "data.csv"))
    for sample in all_samples(task):
        i = sample.meta["level"]
        assert type(i) is int and sample.prompt == f"Say {i}"
        assert type(sample.meta["score"]) is float and sample.meta["score"] == i / 2
        assert sample.meta["tag"] == f"t{i}" and sample.references == ()
    assert len(all_samples(task)) == 10


@pytest.mark.parametrize("layout", ["jsonl", "json list", "json lines", "arrow"])
def test_jsonl_json_and_arrow_files(tmp_path: Path, layout: str) -> None:
    rows = prompts_rows(10, flag=True)
    if layout == "jsonl":
        path = write_jsonl(tmp_path / "data.jsonl", rows)
    elif layout == "json list":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif layout == "json lines":  # what Dataset.to_json writes
        path = write_jsonl(tmp_path / "data.json", rows)
    else:
        path = tmp_path / "data.arrow"
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    task = load_task("file", train=str(path))
    samples = all_samples(task)
    assert sorted(s.meta["n"] for s in samples) == list(range(10))
    for s in samples:
        assert s.prompt == f"Write about item {s.meta['n']}" and s.references == (f"item {s.meta['n']}",)
        assert s.meta["flag"] is True and "prompt" not in s.meta and "references" not in s.meta
    assert len({s.id for s in samples}) == 10


def test_one_file_per_split_and_the_id_field(tmp_path: Path) -> None:
    files = {}
    for split, start in (("train", 0), ("val", 100), ("test", 200)):
        rows = [{**r, "id": f"{split}-{r['n'] + start}"} for r in prompts_rows(3)]
        files[split] = str(write_jsonl(tmp_path / f"{split}.jsonl", rows))
    task = load_task("dataset", **files, max_new_tokens=7)
    assert [s.id for s in task.split("val")] == ["val-100", "val-101", "val-102"]
    assert len(task.split("train")) == 3 and task.generation == {"max_new_tokens": 7}
    assert task.reward is None and "id" not in task.split("test")[0].meta


def test_a_folder_of_split_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for split, n in (("train", 6), ("validation", 2), ("test", 3)):
        write_jsonl(tmp_path / "data" / f"{split}.jsonl", prompts_rows(n, split=split))
    task = load_task("dataset", path=str(tmp_path / "data"))
    assert {split: len(task.split(split)) for split in ("train", "val", "test")} == {"train": 6, "val": 2, "test": 3}
    assert {s.meta["split"] for s in task.split("val")} == {"validation"}


def test_save_to_disk_of_a_single_dataset(tmp_path: Path) -> None:
    datasets.Dataset.from_list(prompts_rows(10)).save_to_disk(str(tmp_path / "one"))
    for task in (load_task("dataset", path=str(tmp_path / "one")), load_task("file", train=str(tmp_path / "one"))):
        assert sorted(s.meta["n"] for s in all_samples(task)) == list(range(10))
        assert len(task.split("val")) == len(task.split("test")) == 1


# --- splits ---------------------------------------------------------------------------------------------------


def test_a_single_file_is_split_with_a_seed(tmp_path: Path) -> None:
    path = str(write_jsonl(tmp_path / "data.jsonl", prompts_rows(20)))

    def ids(seed: int) -> dict[str, list[str]]:
        task = load_task("dataset", path=path, seed=seed, holdout={"val": 0.2, "test": 0.1})
        return {split: [s.id for s in task.split(split)] for split in ("train", "val", "test")}

    first = ids(0)
    assert {split: len(v) for split, v in first.items()} == {"train": 14, "val": 4, "test": 2}
    assert sorted(i for split in first.values() for i in split) == sorted(
        f"data-{n}" for n in range(1, 21)
    )  # every row, once
    assert ids(0) == first
    assert ids(1) != first
    three = load_task("file", train=path, holdout=0.01)  # at least one row each
    assert (len(three.split("val")), len(three.split("test"))) == (1, 1)


def test_split_names(tmp_path: Path) -> None:
    rows = datasets.Dataset.from_list(prompts_rows(6))
    datasets.DatasetDict({"fit": rows, "dev": rows.select(range(2)), "exam": rows.select(range(3))}).save_to_disk(
        str(tmp_path / "named")
    )
    path = str(tmp_path / "named")
    task = load_task("dataset", path=path, train_split="fit", test_split="exam")
    assert [len(task.split(s)) for s in ("train", "val", "test")] == [6, 2, 3]  # 'dev' is recognised as val
    with pytest.raises(DatasetError, match=r"no split 'train' \(it has \['dev', 'exam', 'fit'\]\).*train_split"):
        load_task("dataset", path=path)
    with pytest.raises(DatasetError, match=r"no split 'holdout'.*task_args.val_split"):
        load_task("dataset", path=path, train_split="fit", val_split="holdout")
    with pytest.raises(InputError, match=r"different splits"):
        load_task("dataset", path=path, train_split="fit", test_split="fit")


# --- the hub --------------------------------------------------------------------------------------------------


def test_a_hub_id_offline_and_uncached_is_one_fast_error() -> None:
    start = time.perf_counter()
    with pytest.raises(HubUnavailable) as caught:
        load_task("dataset", path="someone-made-up/no-such-dataset-xyz")
    elapsed = time.perf_counter() - start
    message = str(caught.value)
    assert (
        "'someone-made-up/no-such-dataset-xyz'" in message and "task_args.path" in message and "local copy" in message
    )
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_a_hub_id_offline_reads_the_hub_cache(tmp_path: Path, _offline_cache: Path) -> None:
    # What `load_dataset("someone/cached_set")` leaves in the cache: a prepared arrow split under the id's name.
    write_jsonl(tmp_path / "rows.jsonl", prompts_rows(10))
    datasets.load_dataset("json", data_files=str(tmp_path / "rows.jsonl"), cache_dir=str(tmp_path / "build"))
    [prepared] = [p for p in (tmp_path / "build").glob("json/*/*/*") if p.is_dir()]
    cached = _offline_cache / "someone___cached_set" / "default" / prepared.parts[-2] / prepared.parts[-1]
    shutil.copytree(prepared, cached)
    (cached / "json-train.arrow").rename(cached / "cached_set-train.arrow")
    info = json.loads((cached / "dataset_info.json").read_text(encoding="utf-8"))
    (cached / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default"}), encoding="utf-8")

    task = load_task("dataset", path="someone/cached_set")
    assert sorted(s.meta["n"] for s in all_samples(task)) == list(range(10))
    assert task.split("train")[0].id.startswith("train-") and "hub:someone/cached_set" in task.description


def test_hub_errors_when_the_hub_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets.exceptions import DatasetNotFoundError

    from lmgym.data.tasks import dataset as module

    monkeypatch.setattr(module, "_hub_offline", lambda: None)
    failures = {
        "someone/gone": DatasetNotFoundError("Dataset 'someone/gone' doesn't exist on the Hub"),
        "someone/many": ValueError("Config name is missing. Please pick one among the available configs: ['a', 'b']"),
    }

    def fake_load(repo: str, subset: str | None = None) -> None:
        raise failures[repo]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(DatasetError, match=r"could not load dataset 'someone/gone'.*doesn't exist on the Hub"):
        load_task("dataset", path="someone/gone")
    with pytest.raises(DatasetError, match=r"hub:someone/many: ValueError: Config name is missing.*task_args.subset"):
        load_task("dataset", path="someone/many")


# --- prompts ----------------------------------------------------------------------------------------------------


def test_a_chat_message_column_is_kept_as_messages(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Count to {i}."}]}
        for i in range(6)
    ]
    rows[0]["messages"][0]["name"] = "setup"  # an extra key on one message: the others get None, which is dropped
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    task = load_task("dataset", path=str(path), prompt_field="messages")
    by_count = {s.prompt[1]["content"]: s.prompt for s in all_samples(task)}
    assert by_count["Count to 3."] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Count to 3."},
    ]
    assert by_count["Count to 0."][0] == {"role": "system", "content": "Be brief.", "name": "setup"}

    rows[4]["messages"][1] = {"role": "user", "content": 5}
    write_jsonl(tmp_path / "bad_chat.jsonl", rows)
    with pytest.raises(DatasetError, match=r"bad_chat.jsonl row 5: 'messages'\[1\] must be a \{role, content\}"):
        load_task("dataset", path=str(tmp_path / "bad_chat.jsonl"), prompt_field="messages")


def test_a_template_naming_a_missing_column(tmp_path: Path) -> None:
    path = str(write_jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}", "level": i} for i in range(5)]))
    with pytest.raises(DatasetError, match=r"prompt_template uses column 'topic', which .*q.jsonl lacks.*'question'"):
        load_task("dataset", path=path, prompt_template="{topic}: {question}")
    rows = [{"question": f"q{i}", "topic": "maths" if i != 2 else None} for i in range(5)]
    write_jsonl(tmp_path / "gap.jsonl", rows)
    with pytest.raises(DatasetError, match=r"gap.jsonl row 3: field 'topic' \(used by task_args.prompt_template\)"):
        load_task("dataset", path=str(tmp_path / "gap.jsonl"), prompt_template="{topic}: {question}")
    with pytest.raises(InputError, match=r"names no column"):
        load_task("dataset", path=path, prompt_template="{} and {question}")
    with pytest.raises(InputError, match=r"not a valid format string"):
        load_task("dataset", path=path, prompt_template="{question")
    with pytest.raises(InputError, match=r"prompt_template must be a string.*quote it"):
        load_task("dataset", path=path, prompt_template={"Question": "{question}"})
    task = load_task("dataset", path=path, prompt_template="Q: {question} (level {level:02d})")
    sample = task.split("train")[0]
    assert sample.prompt == f"Q: {sample.meta['question']} (level {sample.meta['level']:02d})"


# --- errors name the file, the row and the field ------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str) -> str:
    (tmp_path / name).write_text(content, encoding="utf-8")
    return str(tmp_path / name)


ROWS_OK = "".join(json.dumps(r) + "\n" for r in prompts_rows(5))
ERRORS: list[tuple[str, str, str, dict[str, Any], type[LmgymError], str]] = [
    # (case, file name, content, task_args besides the file, error class, fragment naming file/row/field)
    (
        "prompt missing in a row",
        "a.jsonl",
        ROWS_OK + '{"text": "x"}\n',
        {},
        DatasetError,
        "a.jsonl row 6 has no 'prompt'",
    ),
    ("prompt not text", "b.jsonl", '{"prompt": 3}\n' + ROWS_OK, {}, DatasetError, "b.jsonl row 1: 'prompt' must be"),
    ("empty prompt in a csv", "c.csv", "prompt,x\nhi,1\n ,2\n", {}, DatasetError, "c.csv row 2: 'prompt' must be"),
    (
        "references not strings",
        "d.jsonl",
        ROWS_OK + '{"prompt": "p", "references": [1]}\n',
        {},
        DatasetError,
        "d.jsonl row 6: 'references' must be a string or a list of strings",
    ),
    (
        "named references absent",
        "e.jsonl",
        ROWS_OK,
        {"references_field": "gold"},
        DatasetError,
        "e.jsonl has no 'gold'",
    ),
    ("named id absent", "f.jsonl", ROWS_OK, {"id_field": "key"}, DatasetError, "f.jsonl has no 'key' field"),
    ("prompt column absent", "g.jsonl", ROWS_OK, {"prompt_field": "text"}, DatasetError, "g.jsonl has no 'text' field"),
    ("bad JSON line", "h.jsonl", ROWS_OK + "{oops\n", {}, DatasetError, "h.jsonl line 6 is not valid JSON"),
    ("not a parquet file", "i.parquet", "text", {}, DatasetError, "i.parquet is not a valid parquet file"),
    ("unsupported extension", "j.txt", "hi", {}, DatasetError, "j.txt: unsupported extension '.txt'"),
    ("too few rows", "k.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n', {}, DatasetError, "k.jsonl has 2 rows: too few"),
    ("single JSON object", "l.json", '{"prompt": "a"}', {}, DatasetError, "l.json holds a single JSON object"),
    ("holdout out of range", "m.jsonl", ROWS_OK, {"holdout": 0.6}, InputError, "leaves no rows for training"),
    ("field and template", "n.jsonl", ROWS_OK, {"prompt_field": "p", "prompt_template": "{p}"}, InputError, "not both"),
]


@pytest.mark.parametrize(("case", "name", "content", "args", "error", "fragment"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_file_row_and_field(
    tmp_path: Path, case: str, name: str, content: str, args: dict, error: type, fragment: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(error) as caught:
        load_task("dataset", path=path, **args)
    assert fragment in str(caught.value)


def test_sources_that_do_not_exist_or_clash(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"task_args.path ./data/train.jsonl does not exist"):
        load_task("dataset", path="./data/train.jsonl")
    with pytest.raises(MissingFileError, match=r"missing.jsonl \(task_args.val\) does not exist"):
        load_task("file", train=_write(tmp_path, "t.jsonl", ROWS_OK), val=str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match=r"task 'dataset' needs task_args.path"):
        load_task("dataset")
    with pytest.raises(InputError, match=r"task 'file' needs task_args.train"):
        load_task("file")
    with pytest.raises(InputError, match=r"not both"):
        load_task("dataset", path="x.jsonl", train="y.jsonl")
    with pytest.raises(InputError, match=r"task_args.train_split applies to task_args.path"):
        load_task("file", train="y.jsonl", train_split="fit")


def test_file_is_an_alias_of_dataset(tmp_path: Path) -> None:
    path = str(write_jsonl(tmp_path / "data.jsonl", prompts_rows(10)))
    as_file, as_dataset = load_task("file", train=path), load_task("dataset", train=path)
    assert as_file.name == "file" and as_dataset.name == "dataset"
    assert as_file.splits == as_dataset.splits
    assert {"file", "dataset"} <= set(available_tasks())
