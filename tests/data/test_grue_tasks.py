"""GRUE tasks: offline generators yield valid samples in the hub schema, and the hub loader maps files in
the hub's format (written from the generators, and small hand-written fixtures) to the expected Samples."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from lmgym.data.hub import DataFormatError
from lmgym.data.registry import available_tasks, load_task
from lmgym.data.tasks.dailydialog import INTENT_LABELS

GRUE = ("imdb", "commongen", "cnn_dailymail", "totto", "narrativeqa", "wmt16", "iwslt2017", "dailydialog")
SMALL = {"n_train": 12, "n_val": 4, "n_test": 4}


def test_every_grue_task_is_registered():
    assert set(GRUE) <= set(available_tasks())


def _check_meta(name: str, sample) -> None:
    meta = sample.meta
    if name == "imdb":
        assert meta["label"] in (0, 1)
    elif name == "commongen":
        assert 3 <= len(meta["concepts"]) <= 5
        assert sample.prompt == "generate a sentence with: " + " ".join(meta["concepts"]) + "."
    elif name == "totto":
        pairs = meta["table"]
        assert all(len(p) == 2 and all(isinstance(x, str) and x for x in p) for p in pairs)
        # every highlighted value is in the linearised prompt
        assert all(
            f"<cell> {value}" in sample.prompt for attr, value in pairs if attr not in ("page_title", "section_title")
        )
    elif name == "dailydialog":
        assert meta["intent"] in INTENT_LABELS
        assert sample.prompt.endswith("<EOU>") and 1 <= len(meta["context"]) <= 5
    elif name in ("wmt16", "iwslt2017"):
        assert sample.prompt == "translate English to German: " + meta["source"]
    elif name == "narrativeqa":
        assert sample.prompt.startswith("question: ") and " context: " in sample.prompt
    elif name == "cnn_dailymail":
        assert sample.prompt.startswith("Summarize: ")


@pytest.mark.parametrize("name", GRUE)
def test_offline_generator_yields_valid_samples(name):
    task = load_task(name, source="offline", seed=3, **SMALL)
    assert task.reward is not None and task.metrics and task.generation["max_new_tokens"] > 0
    ids = set()
    for split in ("train", "val", "test"):
        samples = task.split(split)
        assert len(samples) == SMALL[f"n_{split}"]
        for s in samples:
            assert s.prompt.strip() and s.references and all(isinstance(r, str) and r.strip() for r in s.references)
            _check_meta(name, s)
            ids.add(s.id)
    assert len(ids) == sum(SMALL.values())  # ids are unique across splits
    # Held-out prompts are not training prompts.
    assert not {s.prompt for s in task.split("test")} & {s.prompt for s in task.split("train")}


@pytest.mark.parametrize("name", GRUE)
def test_offline_generator_is_seeded(name):
    first = load_task(name, source="offline", seed=1, **SMALL).split("train")
    again = load_task(name, source="offline", seed=1, **SMALL).split("train")
    other = load_task(name, source="offline", seed=2, **SMALL).split("train")
    assert first == again
    assert [s.prompt for s in first] != [s.prompt for s in other]


def _capture_offline_rows(name: str, monkeypatch) -> dict[str, list[dict]]:
    """The hub-format rows the task's offline generator produced, captured at `load_rows`."""
    module = importlib.import_module(f"lmgym.data.tasks.{name}")
    if not hasattr(module, "load_rows"):  # wmt16 / iwslt2017 delegate to the shared translation module
        module = importlib.import_module("lmgym.data.tasks.translation")
    captured: dict[str, list[dict]] = {}
    original = module.load_rows

    def spy(*args, **kwargs):
        loaded = original(*args, **kwargs)
        captured.update({split: list(rows) for split, rows in loaded.splits.items()})
        return loaded

    monkeypatch.setattr(module, "load_rows", spy)
    return captured


@pytest.mark.parametrize("name", GRUE)
def test_local_copy_in_hub_format_gives_the_same_samples(name, tmp_path, monkeypatch):
    captured = _capture_offline_rows(name, monkeypatch)
    offline = load_task(name, source="offline", seed=5, **SMALL)
    monkeypatch.undo()
    assert captured
    for split, rows in captured.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    local = load_task(name, source="hub", path=str(tmp_path), seed=5, **SMALL)
    for split in ("train", "val", "test"):
        assert local.split(split) == offline.split(split), split


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_imdb_fixture(tmp_path):
    text = "A quiet film.<br />It was lovely and warm from start to end"
    train = [{"text": f"{text} {i}", "label": i % 2} for i in range(6)]
    _write(tmp_path, "train", train)
    _write(tmp_path, "test", [{"text": text, "label": 1}])
    task = load_task("imdb", source="hub", path=str(tmp_path), n_val=2)
    (sample,) = task.split("test")
    # 12 words after <br /> becomes a space: the first 6 are the prompt, the rest the reference.
    assert sample.prompt == "A quiet film. It was lovely"
    assert sample.references == ("and warm from start to end",)
    assert sample.meta == {"label": 1}
    assert len(task.split("train")) == 4 and len(task.split("val")) == 2


def test_totto_fixture_with_spans_and_arrow_layout(tmp_path):
    def cell(value, header=False, span=1):
        return {"value": value, "is_header": header, "column_span": span, "row_span": 1}

    row = {
        "table_page_title": "Ada Example",
        "table_section_title": "Career",
        "table": [
            [cell("Year", True), cell("Team", True), cell("Stats", True, span=2)],
            [cell("Year", True), cell("Team", True), cell("Apps", True), cell("Goals", True)],
            [cell("2010", True), cell("Town FC"), cell("20"), cell("7")],
        ],
        "highlighted_cells": [[2, 1], [2, 3]],
        # Arrow-backed hub rows hold a sequence of dicts as a dict of lists.
        "sentence_annotations": {
            "original_sentence": ["x"],
            "sentence_after_deletion": ["x"],
            "sentence_after_ambiguity": ["x"],
            "final_sentence": ["In 2010, Ada Example scored 7 goals for Town FC."],
        },
    }
    rows = [dict(row, table_page_title=f"Ada Example {i}") for i in range(4)]
    _write(tmp_path, "train", rows)
    _write(tmp_path, "validation", [row])
    task = load_task("totto", source="hub", path=str(tmp_path), n_val=1)
    (sample,) = task.split("test")
    assert sample.prompt == (
        "<page_title> Ada Example </page_title> <section_title> Career </section_title> <table> "
        "<cell> Town FC <col_header> Team </col_header> "
        "<row_header> 2010 </row_header> </cell> "
        "<cell> 7 <col_header> Stats </col_header> <col_header> Goals </col_header> "
        "<row_header> 2010 </row_header> </cell> </table>"
    )
    assert sample.references == ("In 2010, Ada Example scored 7 goals for Town FC.",)
    assert sample.meta["table"] == [
        ("page_title", "Ada Example"),
        ("section_title", "Career"),
        ("Team", "Town FC"),
        ("Stats Goals", "7"),
    ]


def test_dailydialog_fixture(tmp_path):
    dialog = {"dialog": ["Hi, how are you?", "Fine. Shall we go?", "Yes, let's go.", "Great."], "act": [2, 3, 4, 1]}
    for split in ("train", "validation", "test"):
        _write(tmp_path, split, [dialog])
    task = load_task("dailydialog", source="hub", path=str(tmp_path))
    samples = task.split("test")
    assert [s.prompt for s in samples] == [
        "Hi, how are you? <EOU>",
        "Hi, how are you? <EOU> Fine. Shall we go? <EOU>",
        "Hi, how are you? <EOU> Fine. Shall we go? <EOU> Yes, let's go. <EOU>",
    ]
    assert [s.references for s in samples] == [("Fine. Shall we go?",), ("Yes, let's go.",), ("Great.",)]
    assert [s.meta["intent"] for s in samples] == ["directive", "commissive", "inform"]


def test_narrativeqa_and_translation_fixtures(tmp_path):
    qa = {
        "document": {"id": "d1", "summary": {"text": "Ann  finds a key.", "tokens": []}, "text": "..."},
        "question": {"text": "What does Ann find?", "tokens": []},
        "answers": [{"text": "a key", "tokens": []}, {"text": "the key", "tokens": []}],
    }
    for split in ("train", "validation", "test"):
        _write(tmp_path / "qa", split, [qa])
        _write(tmp_path / "mt", split, [{"translation": {"de": "Hallo Welt.", "en": "Hello world."}}])
    (sample,) = load_task("narrativeqa", source="hub", path=str(tmp_path / "qa")).split("test")
    assert sample.prompt == "question: What does Ann find? context: Ann finds a key."
    assert sample.references == ("a key", "the key")
    (sample,) = load_task("wmt16", source="hub", path=str(tmp_path / "mt")).split("test")
    assert (sample.prompt, sample.references) == ("translate English to German: Hello world.", ("Hallo Welt.",))


def test_malformed_rows_name_file_row_and_field(tmp_path):
    for split in ("train", "validation", "test"):
        _write(tmp_path, split, [{"translation": {"de": "Hallo."}}])
    with pytest.raises(DataFormatError, match=r"train.jsonl row 0: field 'translation' lacks a 'en' string"):
        load_task("wmt16", source="hub", path=str(tmp_path))
    _write(tmp_path / "dd", "train", [{"dialog": ["a", "b"], "act": [1]}])
    _write(tmp_path / "dd", "validation", [{"dialog": ["a", "b"], "act": [1, 2]}])
    _write(tmp_path / "dd", "test", [{"dialog": ["a", "b"], "act": [1, 2]}])
    with pytest.raises(DataFormatError, match="row 0: 2 utterances but 1 acts"):
        load_task("dailydialog", source="hub", path=str(tmp_path / "dd"))


def test_missing_columns_and_bad_source_are_clear_errors(tmp_path):
    for split in ("train", "validation"):
        _write(tmp_path, split, [{"concepts": ["a"], "target": "A."}])
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['concept_set_idx'\]"):
        load_task("commongen", source="hub", path=str(tmp_path))
    with pytest.raises(ValueError, match=r"task_args\.source must be one of"):
        load_task("totto", source="web")
    with pytest.raises(ValueError, match=r"task_args\.reward must be one of"):
        load_task("cnn_dailymail", source="offline", reward="bleurt", **SMALL)


def test_german_grammar_of_the_offline_translator():
    import random

    from lmgym.data.tasks.translation import translate_pair

    pairs = [translate_pair(random.Random(i), "news") for i in range(300)]
    for en, de in pairs:
        assert en.endswith(".") and de.endswith(".") and de[0].isupper()
        assert " und " in de if " and " in en else " und " not in de
    # verb second after a fronted time phrase
    fronted = [(en, de) for en, de in pairs if en.startswith("Today,")]
    assert fronted and all(de.split()[0] == "Heute" and de.split()[1][0].islower() for _, de in fronted)


def test_unreachable_hub_falls_back_to_the_generator_only_for_auto(monkeypatch, caplog):
    from lmgym.data.hub import HubUnavailable, hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    try:
        with pytest.raises(HubUnavailable, match="use source=offline"):
            load_task("wmt16", source="hub", **SMALL)
        auto = load_task("wmt16", source="auto", **SMALL)
    finally:
        hub_reachable.cache_clear()
    assert auto.split("test") == load_task("wmt16", source="offline", **SMALL).split("test")
    assert "using the offline generator instead" in caplog.text
