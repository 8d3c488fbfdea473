"""GRUE ToTTo: one sentence that describes the highlighted cells of a table.

Hub: ``google-research-datasets/totto`` (``table_page_title``, ``table_section_title``, ``table``: rows
of cells ``{value, is_header, column_span, row_span}``, ``highlighted_cells``: ``[row, column]`` pairs,
``sentence_annotations``: the reference sentences as ``final_sentence``). The hub's test split has no
references, so ``test`` is its validation split and ``val`` a seeded share of train (as in GRUE).

The prompt linearises the page and section titles and the highlighted cells, each with its column and
row headers::

    <page_title> T </page_title> <section_title> S </section_title> <table> <cell> v
    <col_header> h </col_header> </cell> ... </table>

``meta["table"]`` holds the same content as (attribute, value) pairs for PARENT.

Offline: small tables of five kinds (a footballer's seasons, an election result, a filmography, a
race final, town populations) with one row's cells highlighted and two reference sentences.

Reward: METEOR (default) or PARENT-F1 from the metric registry.
"""

from __future__ import annotations

import random
from typing import Any

from lmgym.data.hub import DataFormatError, HubSpec, Rows, get_field, load_rows, records_of
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks import sentiment as pieces
from lmgym.data.tasks.common import build_task, carve, choose, metric_reward, resolve_sizes, take
from lmgym.rewards.base import Reward

HUB = HubSpec(
    "google-research-datasets/totto",
    None,
    ("train", "validation"),
    ("table_page_title", "table_section_title", "table", "highlighted_cells", "sentence_annotations"),
)
OFFLINE_SIZES = (800, 80, 80)
MAX_NEW_TOKENS = 32
METRICS = ("bleu", "parent", "rouge", "bertscore")

# fmt: off
_CLUBS = ("Penhallow United", "Orlen Bay Rovers", "Kestrel Athletic", "Alder Cross City", "Whitcombe Town",
          "Dunmere Wanderers", "Vennick FC")
_PARTIES = ("Green Party", "Labour Party", "Liberal Party", "Conservative Party", "Independent")
_TOWNS = ("Penhallow", "Orlen Bay", "Kestrel Point", "Alder Cross", "Whitcombe", "Dunmere", "Calloway", "Vennick",
          "Tresk", "Maddox Hill")
_COUNTIES = ("Northshire", "Westmere", "Eastvale", "Southdown")
_NATIONS = ("Norland", "Estavia", "Caldora", "Vestria", "Marenth", "Ostrel")
_EVENTS = ("800 metres", "1500 metres", "5000 metres", "400 metres hurdles")
_ROLES = ("Captain Hale", "Doctor Reyes", "the detective", "young Anna", "the narrator", "Professor Grey")
# fmt: on


def _career(rng: random.Random) -> dict[str, Any]:
    player = pieces._name(rng)
    start = rng.randint(2001, 2012)
    rows = []
    for i in range(rng.randint(3, 5)):
        apps = rng.randint(8, 38)
        rows.append([f"{start + i}–{str(start + i + 1)[2:]}", rng.choice(_CLUBS), str(apps), str(rng.randint(0, apps))])
    r = rng.randrange(len(rows))
    season, club, apps, goals = rows[r]
    refs = [
        f"In the {season} season, {player} scored {goals} goals in {apps} appearances for {club}.",
        f"{player} played {apps} matches for {club} in {season}, scoring {goals} goals.",
    ]
    return _table(player, "Club career", ["Season", "Club", "Apps", "Goals"], rows, r, [0, 1, 2, 3], refs)


def _election(rng: random.Random) -> dict[str, Any]:
    town, year = rng.choice(_TOWNS), rng.choice((2006, 2010, 2014, 2018, 2022))
    parties = rng.sample(_PARTIES, rng.randint(3, 4))
    votes = sorted((rng.randint(1_000, 20_000) for _ in parties), reverse=True)
    total = sum(votes)
    rows = [[pieces._name(rng), p, f"{v:,}", f"{100 * v / total:.1f}"] for p, v in zip(parties, votes, strict=True)]
    name, party, vote, share = rows[0]
    title = f"{year} {town} mayoral election"
    refs = [
        f"{name} of the {party} won the {title} with {share}% of the vote.",
        f"In the {title}, {name} ({party}) won with {vote} votes.",
    ]
    return _table(title, "Results", ["Candidate", "Party", "Votes", "%"], rows, 0, [0, 1, 2, 3], refs)


def _films(rng: random.Random) -> dict[str, Any]:
    actor = pieces._name(rng)
    year = rng.randint(1995, 2015)
    titles = rng.sample(pieces._TITLES, rng.randint(3, 5))
    rows = []
    for title in titles:
        year += rng.randint(1, 3)
        rows.append([str(year), title, rng.choice(_ROLES)])
    r = rng.randrange(len(rows))
    year_s, title, role = rows[r]
    refs = [
        f"In {year_s}, {actor} played {role} in {title}.",
        f"{actor} appeared as {role} in the {year_s} film {title}.",
    ]
    return _table(actor, "Filmography", ["Year", "Title", "Role"], rows, r, [0, 1, 2], refs)


def _race(rng: random.Random) -> dict[str, Any]:
    event, year = rng.choice(_EVENTS), rng.choice((2011, 2013, 2015, 2017, 2019))
    base = {"800 metres": 104.0, "1500 metres": 215.0, "5000 metres": 790.0, "400 metres hurdles": 48.5}[event]
    times = sorted(base + rng.uniform(0, 6) for _ in range(rng.randint(4, 6)))
    rows = []
    for rank, t in enumerate(times, start=1):
        minutes, seconds = divmod(t, 60)
        shown = f"{int(minutes)}:{seconds:05.2f}" if minutes else f"{seconds:.2f}"
        rows.append([str(rank), pieces._name(rng), rng.choice(_NATIONS), shown])
    r = 0 if rng.random() < 0.6 else rng.randrange(len(rows))
    rank, athlete, nation, time = rows[r]
    title = f"Athletics at the {year} Regional Games – Men's {event}"
    place = "won the final" if r == 0 else f"finished {_ordinal(int(rank))} in the final"
    refs = [
        f"{athlete} of {nation} {place} in a time of {time}.",
        f"In the {event} final, {athlete} ({nation}) {place} in {time}.",
    ]
    return _table(title, "Final", ["Rank", "Athlete", "Nation", "Time"], rows, r, [0, 1, 2, 3], refs)


def _towns(rng: random.Random) -> dict[str, Any]:
    county = rng.choice(_COUNTIES)
    rows = [[t, f"{rng.randint(2_000, 90_000):,}", f"{rng.uniform(5, 80):.1f}"] for t in rng.sample(_TOWNS, 5)]
    r = rng.randrange(len(rows))
    town, population, area = rows[r]
    if rng.random() < 0.5:
        refs = [f"{town} has a population of {population}.", f"The population of {town} is {population}."]
        cols = [0, 1]
    else:
        refs = [
            f"{town} has a population of {population} and an area of {area} km2.",
            f"{town} covers {area} km2 and has {population} inhabitants.",
        ]
        cols = [0, 1, 2]
    return _table(f"List of towns in {county}", "Towns", ["Town", "Population", "Area (km2)"], rows, r, cols, refs)


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}[n]


def _table(
    page: str, section: str, header: list[str], rows: list[list[str]], row: int, columns: list[int], refs: list[str]
) -> dict[str, Any]:
    """A hub-format row: a header row, then the body; ``row`` and ``columns`` index the body."""

    def cell(value: str, is_header: bool) -> dict[str, Any]:
        return {"value": value, "is_header": is_header, "column_span": 1, "row_span": 1}

    table = [[cell(h, True) for h in header]] + [[cell(v, False) for v in r] for r in rows]
    return {
        "table_page_title": page,
        "table_section_title": section,
        "table_section_text": "",
        "table": table,
        "highlighted_cells": [[row + 1, c] for c in columns],
        "sentence_annotations": [
            {"original_sentence": s, "sentence_after_deletion": s, "sentence_after_ambiguity": s, "final_sentence": s}
            for s in refs
        ],
    }


_KINDS = (_career, _election, _films, _race, _towns)


def offline_rows(seed: int, n_train: int, n_validation: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed * 7_727 + 2)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("train", n_train), ("validation", n_validation)):
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            row = rng.choice(_KINDS)(rng)
            key = row["sentence_annotations"][0]["final_sentence"]
            if key in seen:
                continue
            seen.add(key)
            rows.append({"id": len(seen), "example_id": str(len(seen)), **row})
        out[split] = rows
    return out


def _grid_spans(row: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """[start, end) grid columns of each cell of a row, from the column spans (row spans are ignored)."""
    spans, start = [], 0
    for cell in row:
        width = max(1, int(cell.get("column_span") or 1))
        spans.append((start, start + width))
        start += width
    return spans


def highlighted_cells(row: dict[str, Any], origin: str, index: int) -> list[tuple[str, list[str], list[str]]]:
    """(value, column headers, row headers) of each highlighted cell, headers found through the grid."""
    table = [records_of(r) for r in get_field(row, "table", origin, index, (list, tuple))]
    cells = []
    for pair in get_field(row, "highlighted_cells", origin, index, (list, tuple)):
        r, c = (int(x) for x in pair)
        if not (0 <= r < len(table) and 0 <= c < len(table[r])):
            raise DataFormatError(f"{origin} row {index}: highlighted cell {[r, c]} is outside the table")
        lo, hi = _grid_spans(table[r])[c]
        col_headers = [
            str(above[j]["value"]).strip()
            for above in table[:r]
            for j, (a, b) in enumerate(_grid_spans(above))
            if above[j].get("is_header") and a < hi and lo < b and str(above[j]["value"]).strip()
        ]
        row_headers = [
            str(table[r][j]["value"]).strip()
            for j in range(c)
            if table[r][j].get("is_header") and str(table[r][j]["value"]).strip()
        ]
        # A header repeated over several header rows (a multi-row header) is named once.
        cells.append((str(table[r][c]["value"]).strip(), list(dict.fromkeys(col_headers)), row_headers))
    if not cells:
        raise DataFormatError(f"{origin} row {index}: no highlighted cells")
    return cells


def linearize(page: str, section: str, cells: list[tuple[str, list[str], list[str]]]) -> str:
    parts = [f"<page_title> {page} </page_title>", f"<section_title> {section} </section_title>", "<table>"]
    for value, col_headers, row_headers in cells:
        parts.append(f"<cell> {value}")
        parts += [f"<col_header> {h} </col_header>" for h in col_headers]
        parts += [f"<row_header> {h} </row_header>" for h in row_headers]
        parts.append("</cell>")
    parts.append("</table>")
    return " ".join(parts)


def _convert(row: dict[str, Any], origin: str, index: int) -> Sample | None:
    page = get_field(row, "table_page_title", origin, index, str).strip()
    section = str(row.get("table_section_title") or "").strip()
    annotations = records_of(get_field(row, "sentence_annotations", origin, index))
    references = tuple(s for a in annotations if (s := str(a.get("final_sentence") or "").strip()))
    if not references:
        return None  # the hub's test split: tables without sentences
    cells = highlighted_cells(row, origin, index)
    table = [("page_title", page), ("section_title", section)] + [
        (" ".join(col) or "cell", value) for value, col, _ in cells
    ]
    return Sample(
        id="",
        prompt=linearize(page, section, cells),
        references=references,
        meta={"table": [(a, v) for a, v in table if v], "example_id": row.get("example_id")},
    )


def totto_reward(reward: str) -> Reward:
    return choose(
        "reward",
        reward,
        {"meteor": lambda: metric_reward("meteor"), "parent": lambda: metric_reward("parent", key="parent-f1")},
    )


@register_task("totto", "GRUE ToTTo: describe highlighted table cells (hub google-research-datasets/totto or offline).")
def totto_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    reward: str = "meteor",
) -> Task:
    """GRUE ToTTo: describe highlighted table cells (hub google-research-datasets/totto or offline)."""
    offline_sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, offline=True)
    loaded = load_rows(
        "totto",
        HUB,
        source,
        path,
        lambda: offline_rows(seed, offline_sizes["train"] + offline_sizes["val"], offline_sizes["test"]),
    )
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, loaded.source == "offline")
    train = loaded.splits["train"]
    n_val_rows = sizes["val"] if sizes["val"] is not None else max(1, len(train) // 50)
    train, val = carve(train, n_val_rows, seed)
    rows: dict[str, Rows] = {
        "train": take(train, sizes["train"], seed),
        "val": val,
        "test": take(loaded.splits["validation"], sizes["test"], seed),
    }
    return build_task(
        "totto",
        rows,
        _convert,
        totto_reward(reward),
        f"Describe the highlighted cells of a table in one sentence; reward {reward}.",
        loaded.source,
        METRICS,
        MAX_NEW_TOKENS,
    )
