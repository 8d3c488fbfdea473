"""GRUE CNN/DailyMail: summarise a news article in a few highlight sentences.

Hub: ``abisee/cnn_dailymail`` config ``3.0.0`` (``article``, ``highlights`` one per line, ``id``). The
prompt is ``Summarize: <article>``, the reference the highlights joined into one text.

Offline: short synthetic news items of six kinds (company news, a council vote, a match result, a
storm, a study, a rescue), each a lead sentence with the key facts, a quote, details with numbers and
some background, and two or three highlights that restate the lead's facts and one detail, in the
hub's row format.

Reward: ROUGE (``rouge-L`` by default, or ``rouge-1``/``rouge-2``/``rouge-Lsum``) or METEOR.
"""

from __future__ import annotations

import random
from typing import Any

from lmgym.data.hub import HubSpec, get_field, load_rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks import sentiment as pieces
from lmgym.data.tasks.common import build_task, choose, metric_reward, resolve_sizes, take_splits
from lmgym.rewards.base import Reward

HUB = HubSpec("abisee/cnn_dailymail", "3.0.0", ("train", "validation", "test"), ("article", "highlights"))
OFFLINE_SIZES = (600, 60, 60)
PREFIX = "Summarize: "
MAX_NEW_TOKENS = 64  # GRUE generated 100 tokens from 512-token articles; offline articles are short
METRICS = ("rouge", "meteor", "bleu", "bertscore", "diversity")

# fmt: off
_CITIES = ("Penhallow", "Orlen Bay", "Kestrel Point", "Alder Cross", "Whitcombe", "Dunmere", "Calloway", "Vennick")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_COMPANIES = ("Northwind Foods", "Brightline Rail", "Harbor Energy", "Cobalt Systems", "Greenfield Dairy",
              "Summit Textiles", "Bluewater Shipping", "Ironbridge Steel")
_SECTORS = ("food", "rail", "energy", "software", "dairy", "clothing", "shipping", "steel")
_FACILITIES = ("factory", "warehouse", "store", "office", "depot")
_PROJECTS = (("bridge", "over the river"), ("library", "in the old town"), ("bus lane", "along the main road"),
             ("sports hall", "next to the school"), ("park", "on the former rail yard"))
_TEAMS = ("Penhallow United", "Orlen Bay Rovers", "Kestrel Athletic", "Alder Cross City", "Whitcombe Town",
          "Dunmere Wanderers")
_CUPS = ("county cup", "regional trophy", "league cup")
_FINDINGS = (("people who walk for thirty minutes a day", "sleep better"),
             ("children who read every evening", "learn new words faster"),
             ("bees exposed to city noise", "collect less pollen"),
             ("patients who drink more water", "recover sooner after surgery"),
             ("office workers who take short breaks", "make fewer mistakes"))
_JOURNALS = ("the Journal of Health Studies", "Nature Letters", "the Review of Applied Biology")
_RESCUES = (("hiker", "a mountain ledge", "two nights in the cold"),
            ("fisherman", "a sinking boat", "six hours at sea"),
            ("climber", "a narrow gorge", "a day without water"),
            ("swimmer", "strong currents", "an hour in the water"))
_TITLES = ("a spokesperson", "the mayor", "the chief executive", "the coach", "the lead author", "a rescue worker")
_NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
# fmt: on


def _name(rng: random.Random) -> str:
    return pieces._name(rng)


def _company(rng: random.Random, city: str, day: str) -> tuple[list[str], list[str]]:
    i = rng.randrange(len(_COMPANIES))
    company, sector, facility = _COMPANIES[i], _SECTORS[i], rng.choice(_FACILITIES)
    n, jobs, cost = rng.choice(_NUMBER_WORDS), rng.choice((120, 250, 400, 800, 1500)), rng.choice((12, 30, 45, 90))
    boss = _name(rng)
    article = [
        f"{company}, the {sector} company based in {city}, said on {day} that it will open {n} new {facility}s "
        f"and hire {jobs} workers over the next two years.",
        f'"This is the biggest investment in our history," said {boss}, the chief executive.',
        f"The plan will cost about {cost} million pounds, and the first {facility} is due to open next spring.",
        f"The company employs around {jobs * 3} people and has grown quickly since it was founded.",
        "Local business groups welcomed the news, saying the region badly needs new jobs.",
    ]
    highlights = [
        f"{company} will open {n} new {facility}s and hire {jobs} workers.",
        f"The plan will cost about {cost} million pounds.",
    ]
    return article, highlights


def _council(rng: random.Random, city: str, day: str) -> tuple[list[str], list[str]]:
    project, where = rng.choice(_PROJECTS)
    yes = rng.randint(12, 20)
    no, cost, years = rng.randint(2, 10), rng.choice((4, 8, 15, 22)), rng.choice(("two", "three", "four"))
    mayor = _name(rng)
    article = [
        f"The council of {city} voted {yes} to {no} on {day} to build a new {project} {where}.",
        f'"People have waited a long time for this," said {mayor}, the mayor.',
        f"The {project} will cost {cost} million pounds and should take {years} years to finish.",
        f"Opponents said the money would be better spent on repairing roads in {city}.",
        "Work is expected to begin early next year.",
    ]
    highlights = [
        f"{city} council voted {yes} to {no} to build a new {project}.",
        f"The {project} will cost {cost} million pounds and take {years} years.",
    ]
    return article, highlights


def _match(rng: random.Random, city: str, day: str) -> tuple[list[str], list[str]]:
    home, away = rng.sample(_TEAMS, 2)
    goals_home, goals_away = rng.randint(2, 5), rng.randint(0, 1)
    scorer, coach, cup = _name(rng), _name(rng), rng.choice(_CUPS)
    crowd = rng.choice((3_000, 5_500, 8_200, 12_000))
    article = [
        f"{home} beat {away} {goals_home}-{goals_away} on {day} to reach the final of the {cup}.",
        f"{scorer} scored twice in the second half as {home} took control of the game.",
        f'"The players gave everything tonight," said {coach}, the coach of {home}.',
        f"A crowd of {crowd} watched the match in {city}.",
        f"{home} will play the final next month.",
    ]
    highlights = [
        f"{home} beat {away} {goals_home}-{goals_away} to reach the {cup} final.",
        f"{scorer} scored twice in the second half.",
    ]
    return article, highlights


def _storm(rng: random.Random, city: str, day: str) -> tuple[list[str], list[str]]:
    rain, schools, homes = rng.choice((40, 65, 90, 120)), rng.randint(5, 30), rng.choice((200, 350, 600, 1_000))
    official = _name(rng)
    article = [
        f"A storm brought {rain} millimetres of rain to {city} on {day}, closing {schools} schools.",
        f"About {homes} homes lost power, and several roads were blocked by fallen trees.",
        f'"We ask everyone to stay at home if they can," said {official}, a spokesperson for the city.',
        "Forecasters expect the wind to ease by the end of the week.",
        "It was the heaviest rain in the area for more than ten years.",
    ]
    highlights = [
        f"A storm brought {rain} millimetres of rain to {city} and closed {schools} schools.",
        f"About {homes} homes lost power.",
    ]
    return article, highlights


def _study(rng: random.Random, city: str, day: str) -> tuple[list[str], list[str]]:
    who, effect = rng.choice(_FINDINGS)
    journal, n, author = rng.choice(_JOURNALS), rng.choice((300, 1_200, 4_000, 9_500)), _name(rng)
    share = rng.choice((15, 20, 30, 40))
    article = [
        f"Researchers at the University of {city} have found that {who} {effect}, according to a study "
        f"published on {day} in {journal}.",
        f"The team followed {n} people for a year.",
        f"On average the difference was about {share} per cent.",
        f'"The effect was larger than we expected," said {author}, the lead author.',
        "The researchers say more work is needed to understand the reasons.",
    ]
    highlights = [
        f"A study found that {who} {effect}.",
        f"The team followed {n} people for a year; the difference was about {share} per cent.",
    ]
    return article, highlights


def _rescue(rng: random.Random, city: str, day: str) -> tuple[list[str], list[str]]:
    person, place, ordeal = rng.choice(_RESCUES)
    age, worker = rng.randint(19, 71), _name(rng)
    article = [
        f"A {age}-year-old {person} was rescued from {place} near {city} on {day} after {ordeal}.",
        "A helicopter crew found the man after a walker raised the alarm.",
        f'"He was very lucky and in good spirits," said {worker}, a rescue worker.',
        "He was taken to hospital as a precaution and is expected to go home soon.",
        "Rescue teams reminded visitors to check the weather before setting out.",
    ]
    highlights = [
        f"A {age}-year-old {person} was rescued near {city} after {ordeal}.",
        "He was taken to hospital as a precaution.",
    ]
    return article, highlights


_KINDS = (_company, _council, _match, _storm, _study, _rescue)


def write_story(rng: random.Random) -> tuple[str, str]:
    """(article, highlights with one per line) of one news item."""
    city, day = rng.choice(_CITIES), rng.choice(_DAYS)
    article, highlights = rng.choice(_KINDS)(rng, city, day)
    body = article[:1] + rng.sample(article[1:], len(article) - 1)  # the lead stays first
    prefix = rng.choice(("", f"{city} (News) -- ", f"By {_name(rng)}. "))
    return prefix + " ".join(body), "\n".join(highlights)


def offline_rows(seed: int, n_train: int, n_validation: int, n_test: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed * 3_571 + 5)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            article, highlights = write_story(rng)
            if article in seen:
                continue
            seen.add(article)
            rows.append({"article": article, "highlights": highlights, "id": f"offline-{len(seen):06d}"})
        out[split] = rows
    return out


def _convert(row: dict[str, Any], origin: str, index: int) -> Sample | None:
    article = get_field(row, "article", origin, index, str).strip()
    highlights = get_field(row, "highlights", origin, index, str).strip()
    if not article or not highlights:
        return None
    lines = [line.strip() for line in highlights.splitlines() if line.strip()]
    return Sample(
        id="",
        prompt=PREFIX + article,
        references=(" ".join(lines),),
        meta={"highlights": lines, "article_id": row.get("id")},
    )


def summary_reward(reward: str) -> Reward:
    rouge = {k: (lambda k=k: metric_reward("rouge", key=k)) for k in ("rouge-1", "rouge-2", "rouge-L", "rouge-Lsum")}
    return choose("reward", reward, {**rouge, "meteor": lambda: metric_reward("meteor")})


@register_task("cnn_dailymail", "GRUE CNN/DailyMail summarisation (hub abisee/cnn_dailymail or offline).")
def cnn_dailymail_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    reward: str = "rouge-L",
) -> Task:
    """GRUE CNN/DailyMail summarisation (hub abisee/cnn_dailymail or offline)."""
    offline_sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, offline=True)
    loaded = load_rows(
        "cnn_dailymail",
        HUB,
        source,
        path,
        lambda: offline_rows(seed, offline_sizes["train"], offline_sizes["val"], offline_sizes["test"]),
    )
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, loaded.source == "offline")
    return build_task(
        "cnn_dailymail",
        take_splits(loaded.splits, sizes, seed),
        _convert,
        summary_reward(reward),
        f"Summarise a news article; reward {reward}.",
        loaded.source,
        METRICS,
        MAX_NEW_TOKENS,
        truncation_side="right",  # the instruction comes before the article: cut the end
    )
