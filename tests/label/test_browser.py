"""`lmgym label` in a real headless Chromium: keyboard labelling with undo across a SIGKILL of the server, two
annotators at once, an XSS probe, and the one-screen layout at 1280×800 (with the page's load time)."""

from __future__ import annotations

import json
from pathlib import Path

from lmgym.data.preferences import load_comparisons
from lmgym.data.tasks.files import read_rows
from lmgym.label.sources import jsonl_pairs
from lmgym.label.store import active_rows

from .helpers import free_port, pair_source, press, shown, sign_in, write_jsonl


def test_keyboard_labelling_with_undo_survives_a_sigkill(tmp_path: Path, cli_server, new_page) -> None:
    source, out = pair_source(tmp_path / "pairs.jsonl", 12), tmp_path / "labels.jsonl"
    args = [str(source), "--out", str(out), "--port", str(free_port())]
    server = cli_server(*args)
    page = new_page()
    sign_in(page, server.base, "alice")
    acked: dict[str, tuple[str, str, str]] = {}  # item → (key, left, right), for every judgment the page confirmed

    def judge(key: str) -> str:
        item, left, right = shown(page)
        following = press(page, key)
        acked[item] = (key, left, right)
        return following

    for key in ["r", "5", "Escape", "e"]:  # the optional rating and reason, from the keyboard too
        page.keyboard.press(key)
    page.keyboard.type("clearer, kinder")
    page.keyboard.press("Enter")  # leaves the field without sending the form
    rated = shown(page)[0]
    judge("1")
    for key in ["2", "t", "1", "2"]:
        judge(key)
    last_item = list(acked)[-1]
    assert press(page, "u") == last_item  # the undone item comes back at once
    assert "undone" in page.inner_text("#notice")
    undone_row = active_rows(read_rows(out))  # the undone judgment is withdrawn on disk already
    assert all(row["item"] != last_item for row in undone_row.values())
    del acked[last_item]
    judge("1")  # judged again, differently
    judge("s")

    server.kill()
    with out.open("ab") as f:  # what a kill in the middle of a write leaves: a line without its newline
        f.write(b'{"id": "j-torn", "judgment": "pick", "prompt": "Prom')
    server = cli_server(*args)  # the same command
    assert any("half-written" in line for line in server.output)
    page.goto(server.base + "/")  # the annotator's cookie still names her
    while len(acked) < 10:
        assert shown(page)[0] not in acked  # continues where it stopped: nothing is shown twice
        judge(["2", "1", "t"][len(acked) % 3])

    rows = read_rows(out)  # the strict reader: no torn line is left
    active = active_rows(rows)
    assert [(r["rating"], r["reason"]) for r in active.values() if r["item"] == rated] == [(5, "clearer, kinder")]
    assert sorted(r["item"] for r in active.values()) == sorted(acked)  # every acknowledged judgment, once
    assert sum(r["judgment"] == "undo" for r in rows) == 1
    comparisons = load_comparisons(out)  # what `lmgym rm train` and DPO read
    picks = {r["item"]: r for r in active.values() if r["judgment"] == "pick"}
    assert sorted(c.id for c in comparisons) == sorted(r["id"] for r in picks.values())
    for item, (key, left, right) in acked.items():
        row = next(r for r in active.values() if r["item"] == item)
        assert row["annotator"] == "alice" and row["time"] and row["source"]["kind"] == "jsonl"
        assert row["judgment"] == {"1": "pick", "2": "pick", "t": "tie", "s": "skip"}[key]
        if key in "12":
            assert (row["chosen"], row["rejected"]) == ((left, right) if key == "1" else (right, left))
            assert row["winner"] == row["shown_order"][int(key) - 1]
        else:
            assert "chosen" not in row and sorted(row["responses"]) == sorted([left, right])


def test_two_annotators_at_once(tmp_path: Path, thread_server, new_page) -> None:
    items = jsonl_pairs(pair_source(tmp_path / "pairs.jsonl", 6))
    both = thread_server(items, tmp_path / "both.jsonl", per_item=2)
    alice, bob = new_page(), new_page()
    sign_in(alice, both.base, "alice")
    sign_in(bob, both.base, "bob")
    first = shown(alice)[0]
    assert shown(bob)[0] == first  # --per-item 2: both judge the same item
    assert press(alice, "1") == press(bob, "2") != first
    assert {(r["annotator"], r["item"]) for r in read_rows(tmp_path / "both.jsonl")} == {
        ("alice", first),
        ("bob", first),
    }

    single = thread_server(items, tmp_path / "single.jsonl", per_item=1)
    carol, dave = new_page(), new_page()
    sign_in(carol, single.base, "carol")
    sign_in(dave, single.base, "dave")
    seen = {"carol": [shown(carol)[0]], "dave": [shown(dave)[0]]}
    for _ in range(2):
        seen["carol"].append(press(carol, "1"))
        seen["dave"].append(press(dave, "2"))
    assert not set(seen["carol"]) & set(seen["dave"])  # --per-item 1: never the same item
    assert len(set(seen["carol"])) == len(set(seen["dave"])) == 3  # and no one sees an item twice


def test_xss_probe_shows_as_text(tmp_path: Path, thread_server, new_page) -> None:
    probe = "<script>window.pwned=1</script><b>x</b>"
    prompt = '<img src=x onerror="window.pwned=2">Tell me <i>more</i>'
    source = write_jsonl(tmp_path / "xss.jsonl", [{"prompt": prompt, "responses": [probe, "plain answer"]}])
    server = thread_server(jsonl_pairs(source), tmp_path / "labels.jsonl")
    page = new_page()
    sign_in(page, server.base, "eve")
    assert page.evaluate("window.pwned") is None
    assert probe in (page.inner_text("#left .text"), page.inner_text("#right .text"))
    assert page.inner_text("#prompt") == prompt
    assert page.locator("main b, main i, main script, section img").count() == 0


def test_one_screen_at_1280x800_and_load_time(tmp_path: Path, thread_server, new_page) -> None:
    words = "the story opens slowly but the second act earns every minute with sharp dialogue".split()  # noqa: SIM905
    response = " ".join(words[i % len(words)] for i in range(150))
    prompt = "Write a short review of a film you saw recently, in about 150 words. " * 2
    source = write_jsonl(tmp_path / "long.jsonl", [{"prompt": prompt, "responses": [response, response.upper()]}])
    server = thread_server(jsonl_pairs(source), tmp_path / "labels.jsonl")
    page = new_page()
    sign_in(page, server.base, "ann")
    page.reload(wait_until="load")
    layout = page.evaluate("""() => ({
        page: document.documentElement.scrollHeight, view: innerHeight, width: document.documentElement.scrollWidth,
        boxes: [...document.querySelectorAll('.response, .prompt')].map(e => e.scrollHeight - e.clientHeight),
        bottom: Math.max(...[...document.querySelectorAll('button, select, input')]
                         .map(e => e.getBoundingClientRect().bottom)),
    })""")  # fmt: skip
    assert layout["page"] <= layout["view"] == 800 and layout["width"] <= 1280  # no page scrolling
    assert max(layout["boxes"]) <= 0  # the prompt and both responses show whole, no inner scrolling
    assert layout["bottom"] <= 800  # every control is on screen
    timing = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    nav = json.loads(timing)
    print(f"\npage load: response {nav['responseEnd']:.1f} ms, DOMContentLoaded "
          f"{nav['domContentLoadedEventEnd']:.1f} ms, load {nav['loadEventEnd']:.1f} ms")  # fmt: skip
    assert nav["loadEventEnd"] < 2000
