"""Offline positive-sentiment task: continue mostly neutral movie-review openings.

Prompts are built combinatorially from hand-written pieces (invented titles, people,
settings and plot set-ups slotted into reviewer framings). Every opening stops
mid-thought so that a continuation is natural; the reward is VADER's compound score
of the continuation, so the model has to learn to steer the review positive.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks.common import distinct_draws
from lmgym.errors import InputError
from lmgym.rewards.sentiment import VaderSentiment

MIN_WORDS, MAX_WORDS = 12, 40

# Pieces, written for this task. Words were picked to be absent from (or near 0 in) the VADER lexicon.
# fmt: off
_TITLE_ADJ = (
    "Quiet", "Northern", "Last", "Long", "Paper", "Glass", "Iron", "Silver", "Hollow", "Distant",
    "Winter", "Second", "Seventh", "Copper", "Amber", "Salt", "Narrow", "Borrowed", "Late", "Western",
    "Painted", "Outer", "Eastern", "Slow",
)
_TITLE_NOUN = (
    "Harbor", "Orchard", "Station", "Lantern", "Meridian", "Corridor", "Tide", "Archive", "Ferry", "Signal",
    "Tower", "Bridge", "Meadow", "Compass", "Atlas", "Quarry", "Lighthouse", "Avenue", "Frontier", "Season",
    "Ledger", "Window", "Engine", "Canal", "Forecast", "Crossing",
)
_PLACES = (
    "Penhallow", "Orlen Bay", "Kestrel Point", "Alder Cross", "Whitcombe", "Tresk", "Maddox Hill", "Vennick",
    "Saltmarsh Lane", "Calloway", "Dunmere", "Harrowgate Road",
)
_MONTHS = ("March", "April", "June", "August", "October", "November")
# fmt: on
_TITLES: tuple[str, ...] = (
    tuple(f"The {a} {n}" for a, n in itertools.product(_TITLE_ADJ, _TITLE_NOUN))
    + tuple(f"{n}s of {p}" for n, p in itertools.product(("Lantern", "Tide", "Signal", "Bridge", "Window"), _PLACES))
    + tuple(f"{m} in {p}" for m, p in itertools.product(_MONTHS, _PLACES))
)

# fmt: off
_GENRES = (
    "drama", "thriller", "mystery", "science fiction film", "western", "period drama", "road movie", "heist film",
    "family drama", "courtroom drama", "musical", "ensemble piece", "coming-of-age story", "political thriller",
    "documentary", "animated feature", "sports drama", "chamber piece", "detective story", "historical epic",
    "slow-burn character study", "workplace satire", "melodrama",
)
_FIRST = (
    "Mara", "Tomas", "Idris", "Helena", "Oskar", "Priya", "Anselm", "Junie", "Callum", "Ines", "Rafael", "Noor",
    "Dmitri", "Sabine", "Teodor", "Wren", "Lucan", "Esme", "Kofi", "Yara", "Bastian", "Ilse", "Marek", "Odile",
)
_LAST = (
    "Ellison", "Varga", "Okafor", "Lindqvist", "Serrano", "Halvorsen", "Achterberg", "Pell", "Marchetti", "Ruane",
    "Castell", "Voss", "Adeyemi", "Kowalczyk", "Tamura", "Brannock", "Delaune", "Fenwick", "Ostrander", "Quill",
    "Nwosu", "Saarinen",
)
_ROLES = (
    "a night-shift nurse", "a retired detective", "a ferry captain", "a small-town pharmacist", "a land surveyor",
    "a piano teacher", "a long-haul trucker", "a junior architect", "a census taker", "a lighthouse keeper",
    "a museum archivist", "a radio technician", "a county clerk", "a substitute teacher", "a beekeeper",
    "a translator", "a hotel night manager", "a tax auditor", "a marine biologist", "a bus driver", "a locksmith",
    "a mail carrier", "a chess coach", "a train conductor",
)
_SETTINGS = (
    "a small fishing town on the northern coast", "a mining settlement in the nineteen-twenties",
    "a research station in Antarctica", "an apartment building in the nineteen-seventies",
    "a border town between two unnamed countries", "a commuter suburb outside a mid-sized city",
    "a houseboat community on a slow river", "an orbital station a few decades from now",
    "a family farm in the middle of harvest season", "a provincial hospital over one winter",
    "a hotel that is about to close for renovation", "a logging camp in the mountains",
    "a port city at the turn of the century", "a desert town along an old railway line",
    "a university campus over one semester", "a small island linked to the mainland by one ferry",
    "an office tower in the middle of a merger", "a village in the week before its local election",
    "a motel on a two-lane highway", "a boarding school during the summer break",
)
_SETUPS = (
    "a retired engineer moves into the spare room of a former colleague",
    "two sisters inherit a house that neither of them has visited in years",
    "a surveyor arrives to map a stretch of coastline before a new road is built",
    "a family spends one weekend sorting through their grandfather's papers",
    "a nurse starts keeping a record of the patients who talk in their sleep",
    "a young translator is hired to accompany a visiting delegation for a week",
    "a small orchestra rehearses for a single concert in a rented hall",
    "a ferry captain makes the same crossing every day for thirty years",
    "an architect returns to the town where she designed her first building",
    "two strangers end up in the same train compartment on an overnight journey",
    "a census taker goes door to door through a sprawling rural district",
    "a teenager takes a summer job at a roadside motel",
    "a radio technician picks up a signal that nobody else seems to hear",
    "a chess coach prepares an unlikely student for a regional tournament",
    "a mail carrier notices that one house on her route never receives letters",
    "an old classmate turns up at a wedding after twenty years away",
    "an archivist is asked to catalogue a collection nobody has opened in decades",
    "three generations of a family run a bakery on the same street corner",
    "a beekeeper and her brother try to keep the family farm running",
    "a crew of engineers is sent to repair a satellite dish on a remote mountain",
    "a substitute teacher takes over a class halfway through the school year",
    "a bus driver starts to recognize the regular passengers on the last route of the night",
    "a locksmith is called to open a locked cabinet in a vacant house",
    "a cartographer is hired to draw a map of a town that keeps changing",
    "a hotel manager has one week to prepare for a large conference",
    "two brothers drive across the country to deliver an old piano",
)
_WHEN = (
    "last night", "over the weekend", "on a Sunday afternoon", "on Friday", "earlier this week", "on Saturday",
    "on a long flight", "at a small local theater", "on a weeknight", "after work on Tuesday",
)
_RUNTIMES = (
    "ninety-four minutes", "just under two hours", "a little over two hours", "about a hundred minutes",
    "eighty-eight minutes", "two hours and ten minutes", "nearly two and a half hours", "ninety minutes flat",
)
_ORDINALS = ("second", "third", "fourth", "fifth", "sixth")

# fmt: on

# Reviewer framings; each names the title and genre and stops mid-thought.
_FRAMINGS = (
    "I watched {title}, {a_genre} starring {actor}, {when} and",
    "I watched {title}, the new {genre} from {director}, {when}, and the",
    "Going into {title}, I expected {a_genre} about {role} in {setting}, and",
    "Going into {title} I knew only that it was {a_genre} set in {setting}, so",
    "The first act of {title}, {a_genre}, is set in {setting}, where {setup}, and the",
    "{title} is the kind of {genre} where {setup}, and",
    "With {title}, {director} has made the kind of {genre} where {setup}, which",
    "{title} is {a_genre} directed by {director} in which {setup}. The",
    "In {title}, {a_genre} set in {setting}, {actor} stars as {role}, and",
    "{director}'s {genre} {title} opens in {setting}, where {setup}, which",
    "The trailer for {title} sold it as {a_genre} about {role}, but the film itself",
    "About twenty minutes into the {genre} {title}, {setup}, and",
    "The premise of {title}, {a_genre} from {director}, is simple: {setup}. What",
    "My brother mentioned {title}, {a_genre} starring {actor}, so {when} I",
    "Before saying anything else about {title}, I should mention that this {genre} runs {runtime} and",
    "{title}, {a_genre} from {director}, runs {runtime}, stars {actor} and {actor2}, and",
    "The opening shot of {title}, {a_genre} from {director}, lingers on {setting} for almost a minute before the",
    "I saw {title} at a weekday matinee, knowing only that it was {a_genre} with {actor} as {role}, and",
    "It took me a while to decide what I think of {title}, {a_genre} in which {setup}. For the first hour, the",
    "Walking out of {title}, {director}'s {ordinal} {genre}, the first thing I",
    "{actor} and {actor2} star in {title}, {director}'s {ordinal} {genre}, which",
    "Set in {setting}, the {genre} {title} follows {role} who",
    "The {genre} {title} centers on {role} in {setting}, and for most of its running time the",
    "Having read nothing about {title} beforehand, I went in knowing only that it was {a_genre}, and",
    "If you have seen any of {director}'s earlier films, then {title}, {a_genre} set in {setting}, will",
    "{title} is {director}'s {ordinal} {genre} and the first one set in {setting}, so the",
    "Most of {title}, {a_genre} from {director}, takes place over a single week, during which {setup}, and the way",
    "The new {genre} {title} asks a simple question: what happens when {setup}? The answer",
)


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _draw(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One candidate opening and its metadata. Always draws every slot so the stream stays aligned."""
    framing = rng.randrange(len(_FRAMINGS))
    title, genre = rng.choice(_TITLES), rng.choice(_GENRES)
    actor = _name(rng)
    actor2 = _name(rng)
    while actor2 == actor:
        actor2 = _name(rng)
    slots = {
        "title": title,
        "genre": genre,
        "a_genre": _article(genre),
        "director": _name(rng),
        "actor": actor,
        "actor2": actor2,
        "role": rng.choice(_ROLES),
        "setting": rng.choice(_SETTINGS),
        "setup": rng.choice(_SETUPS),
        "when": rng.choice(_WHEN),
        "runtime": rng.choice(_RUNTIMES),
        "ordinal": rng.choice(_ORDINALS),
    }
    text = _FRAMINGS[framing].format(**slots)
    return text[0].upper() + text[1:], {"title": title, "genre": genre, "framing": framing}


def _build(seed: int, n: int) -> list[tuple[str, dict[str, Any]]]:
    """`n` distinct openings (with metadata) in generation order, drawn with `random.Random(seed)`."""

    def draw(rng: random.Random, _kept: int) -> tuple[str, dict[str, Any]] | None:
        text, meta = _draw(rng)
        return (text, meta) if MIN_WORDS <= len(text.split()) <= MAX_WORDS else None

    return distinct_draws(seed, n, draw)


def build_prompts(seed: int, n: int) -> list[str]:
    """`n` distinct, mostly neutral movie-review openings; the same seed gives the same list."""
    return [text for text, _ in _build(seed, n)]


@register_task("sentiment", "Continue movie-review openings with positive sentiment (offline, VADER reward).")
def sentiment_task(seed: int = 0, n_train: int = 600, n_val: int = 100, n_test: int = 100) -> Task:
    """Continue movie-review openings with positive sentiment (offline, VADER reward)."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, size in sizes.items():
        if size < 1:
            raise InputError(f"n_{split} must be >= 1, got {size}")
    # One pool of distinct texts cut into consecutive slices, so the splits cannot share a prompt.
    pool = _build(seed, n_train + n_val + n_test)
    splits: dict[str, list[Sample]] = {}
    start = 0
    for split, size in sizes.items():
        splits[split] = [
            Sample(id=f"sentiment-{split}-{i:05d}", prompt=text, references=(), meta=meta)
            for i, (text, meta) in enumerate(pool[start : start + size])
        ]
        start += size
    return Task(
        name="sentiment",
        splits=splits,
        reward=VaderSentiment(),
        description="Continue a mostly neutral movie-review opening so that the review turns positive; "
        "the reward is the VADER compound score of the continuation.",
        metrics=("reward", "perplexity", "distinct"),
        generation={"max_new_tokens": 24},
    )
