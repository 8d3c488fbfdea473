"""English → German translation for the GRUE tasks ``wmt16`` and ``iwslt2017``: the shared loader,
reward and the offline generator, a small lexicon-and-grammar translator written here.

Hub rows hold ``translation: {"de": ..., "en": ...}``. The prompt is T5's
``translate English to German: <en>``, the reference the German sentence.

The offline translator writes an English sentence and its German translation from the same parse:
subject and object noun phrases (article, optional adjective, noun) with German gender, case
(nominative / accusative, dative after ``in``/``an``) and adjective endings, present-tense verbs
conjugated for person and number, optional place and time phrases, and German verb-second order
when a time phrase comes first ("Heute kauft der alte Mann einen Hut."). Two clauses may be joined
with "and"/"und". ``style="news"`` (wmt16) uses third-person subjects; ``style="talk"`` (iwslt2017)
adds I/we/you/they.

Reward: ``1 − TER`` (default, as in GRUE) or chrF, both from the metric registry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmgym.data.hub import DataFormatError, HubSpec, get_field, load_rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task
from lmgym.data.tasks.common import build_task, choose, metric_reward, resolve_sizes, take_splits
from lmgym.rewards.base import Reward

PREFIX = "translate English to German: "
OFFLINE_SIZES = (1000, 100, 100)
MAX_NEW_TOKENS = 48
METRICS = ("sacrebleu", "chrf", "ter", "meteor", "bertscore")

# fmt: off
# Nouns: English, German, gender (m, f, n).
_PEOPLE = (
    ("man", "Mann", "m"), ("woman", "Frau", "f"), ("child", "Kind", "n"), ("teacher", "Lehrer", "m"),
    ("doctor", "Arzt", "m"), ("student", "Studentin", "f"), ("neighbour", "Nachbar", "m"),
    ("girl", "Mädchen", "n"), ("boy", "Junge", "m"), ("farmer", "Bauer", "m"), ("cook", "Köchin", "f"),
    ("president", "Präsident", "m"), ("minister", "Ministerin", "f"), ("police officer", "Polizist", "m"),
)
_THINGS = (
    ("book", "Buch", "n"), ("letter", "Brief", "m"), ("car", "Auto", "n"), ("house", "Haus", "n"),
    ("apple", "Apfel", "m"), ("hat", "Hut", "m"), ("newspaper", "Zeitung", "f"), ("bag", "Tasche", "f"),
    ("door", "Tür", "f"), ("window", "Fenster", "n"), ("table", "Tisch", "m"), ("bicycle", "Fahrrad", "n"),
    ("report", "Bericht", "m"), ("plan", "Plan", "m"), ("law", "Gesetz", "n"), ("city", "Stadt", "f"),
    ("map", "Karte", "f"), ("key", "Schlüssel", "m"), ("cup", "Tasse", "f"), ("picture", "Bild", "n"),
)
_PLACES = (  # English phrase, German preposition, noun, gender; dative
    ("in the park", "in", "Park", "m"), ("in the kitchen", "in", "Küche", "f"), ("in the city", "in", "Stadt", "f"),
    ("in the garden", "in", "Garten", "m"), ("in the office", "in", "Büro", "n"), ("in the house", "in", "Haus", "n"),
    ("at the station", "an", "Bahnhof", "m"), ("at the window", "an", "Fenster", "n"),
    ("in the school", "in", "Schule", "f"), ("in the parliament", "in", "Parlament", "n"),
)
# Verbs: English base, English 3rd singular, German 1st singular, plural (also formal Sie), 3rd singular.
_VERBS = (
    ("buy", "buys", "kaufe", "kaufen", "kauft"), ("see", "sees", "sehe", "sehen", "sieht"),
    ("read", "reads", "lese", "lesen", "liest"), ("find", "finds", "finde", "finden", "findet"),
    ("need", "needs", "brauche", "brauchen", "braucht"), ("have", "has", "habe", "haben", "hat"),
    ("open", "opens", "öffne", "öffnen", "öffnet"), ("like", "likes", "mag", "mögen", "mag"),
    ("carry", "carries", "trage", "tragen", "trägt"), ("write", "writes", "schreibe", "schreiben", "schreibt"),
    ("sell", "sells", "verkaufe", "verkaufen", "verkauft"), ("build", "builds", "baue", "bauen", "baut"),
    ("want", "wants", "will", "wollen", "will"), ("discuss", "discusses", "diskutiere", "diskutieren", "diskutiert"),
)
_ADJECTIVES = (  # English, German stem
    ("old", "alt"), ("new", "neu"), ("small", "klein"), ("big", "groß"), ("red", "rot"), ("young", "jung"),
    ("good", "gut"), ("long", "lang"), ("beautiful", "schön"), ("important", "wichtig"),
)
_TIMES = (
    ("today", "heute"), ("tomorrow", "morgen"), ("every morning", "jeden Morgen"), ("in the evening", "am Abend"),
    ("on Sunday", "am Sonntag"), ("now", "jetzt"), ("often", "oft"), ("this week", "diese Woche"),
)
_PRONOUNS = (  # English, German, index of the German verb form in a _VERBS row (2: 1st singular, 3: plural)
    ("I", "ich", 2), ("we", "wir", 3), ("you", "Sie", 3), ("they", "sie", 3),
)
# fmt: on
_DEF = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"}}
_INDEF = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}
_DATIVE = {"in": {"m": "im", "f": "in der", "n": "im"}, "an": {"m": "am", "f": "an der", "n": "am"}}


def _adjective_ending(definite: bool, case: str, gender: str) -> str:
    """Weak endings after der/die/das, mixed endings after ein/eine (singular only)."""
    if definite:
        return "en" if case == "acc" and gender == "m" else "e"
    if gender == "m":
        return "er" if case == "nom" else "en"
    return "e" if gender == "f" else "es"


@dataclass(frozen=True)
class Phrase:
    en: str
    de: str


def noun_phrase(rng: random.Random, nouns: tuple[tuple[str, str, str], ...], case: str) -> Phrase:
    en_noun, de_noun, gender = rng.choice(nouns)
    definite = rng.random() < 0.6
    adjective = rng.choice(_ADJECTIVES) if rng.random() < 0.4 else None
    first_word = adjective[0] if adjective else en_noun
    en_words = ["the" if definite else ("an" if first_word[0] in "aeiou" else "a")]
    de_words = [(_DEF if definite else _INDEF)[case][gender]]
    if adjective:
        en_words.append(adjective[0])
        de_words.append(adjective[1] + _adjective_ending(definite, case, gender))
    return Phrase(" ".join([*en_words, en_noun]), " ".join([*de_words, de_noun]))


def clause(rng: random.Random, style: str) -> tuple[Phrase, Phrase, Phrase, Phrase | None]:
    """(subject, verb, object, place or None) of one clause."""
    base, third, de_1sg, de_pl, de_3sg = rng.choice(_VERBS)
    if style == "talk" and rng.random() < 0.5:
        en_subject, de_subject, form = rng.choice(_PRONOUNS)
        subject = Phrase(en_subject, de_subject)
        verb = Phrase(base, (de_1sg if form == 2 else de_pl))
    else:
        subject = noun_phrase(rng, _PEOPLE, "nom")
        verb = Phrase(third, de_3sg)
    obj = noun_phrase(rng, _THINGS, "acc")
    place = None
    if rng.random() < 0.5:
        en_place, prep, noun, gender = rng.choice(_PLACES)
        place = Phrase(en_place, f"{_DATIVE[prep][gender]} {noun}")
    return subject, verb, obj, place


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def translate_pair(rng: random.Random, style: str = "news") -> tuple[str, str]:
    """One (English, German) sentence pair."""
    clauses = [clause(rng, style) for _ in range(2 if rng.random() < 0.25 else 1)]
    time = rng.choice(_TIMES) if rng.random() < 0.4 else None
    en_parts, de_parts = [], []
    for i, (subject, verb, obj, place) in enumerate(clauses):
        en = [subject.en, verb.en, obj.en] + ([place.en] if place else [])
        if i == 0 and time:  # German puts the verb second: time, verb, subject, object
            de = [time[1], verb.de, subject.de, obj.de] + ([place.de] if place else [])
            en = [time[0] + ",", *en]
        else:
            de = [subject.de, verb.de, obj.de] + ([place.de] if place else [])
        en_parts.append(" ".join(en))
        de_parts.append(" ".join(de))
    english, german = " and ".join(en_parts), " und ".join(de_parts)
    return _cap(english) + ".", _cap(german) + "."


def offline_rows(
    seed: int, style: str, n_train: int, n_validation: int, n_test: int
) -> dict[str, list[dict[str, Any]]]:
    """Hub-format rows ``{"translation": {"de", "en"}}``, no English sentence in two splits."""
    rng = random.Random(seed * 6_151 + (0 if style == "news" else 1))
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            en, de = translate_pair(rng, style)
            if en not in seen:
                seen.add(en)
                rows.append({"translation": {"de": de, "en": en}})
        out[split] = rows
    return out


def _convert(row: dict[str, Any], origin: str, index: int) -> Sample | None:
    pair = get_field(row, "translation", origin, index, dict)
    for lang in ("en", "de"):
        if not isinstance(pair.get(lang), str):
            raise DataFormatError(f"{origin} row {index}: field 'translation' lacks a {lang!r} string")
    en, de = pair["en"].strip(), pair["de"].strip()
    if not en or not de:
        return None
    return Sample(id="", prompt=PREFIX + en, references=(de,), meta={"source": en})


def translation_reward(reward: str) -> Reward:
    return choose(
        "reward",
        reward,
        {
            "ter": lambda: metric_reward("ter", scale=-1.0, offset=1.0),  # TER is an error rate: 1 − TER
            "chrf": lambda: metric_reward("chrf", scale=0.01),  # sacrebleu's chrF is 0-100
        },
    )


def translation_task(
    name: str,
    hub: HubSpec,
    style: str,
    source: str,
    path: Any,
    seed: int,
    n_train: int | None,
    n_val: int | None,
    n_test: int | None,
    reward: str,
) -> Task:
    offline_sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, offline=True)
    loaded = load_rows(
        name,
        hub,
        source,
        path,
        lambda: offline_rows(seed, style, offline_sizes["train"], offline_sizes["val"], offline_sizes["test"]),
    )
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, loaded.source == "offline")
    return build_task(
        name,
        take_splits(loaded.splits, sizes, seed),
        _convert,
        translation_reward(reward),
        f"Translate English to German; reward {'1 − TER' if reward == 'ter' else reward}.",
        loaded.source,
        METRICS,
        MAX_NEW_TOKENS,
    )


def translation_factory(name: str, hub: HubSpec, style: str, description: str) -> Callable[..., Task]:
    """The registered factory of one translation task (``wmt16``, ``iwslt2017``): same arguments for each."""

    def factory(
        source: str = "auto",
        path: Any = None,
        seed: int = 0,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        reward: str = "ter",
    ) -> Task:
        return translation_task(name, hub, style, source, path, seed, n_train, n_val, n_test, reward)

    factory.__name__ = factory.__qualname__ = f"{name}_task"
    factory.__doc__ = description
    return factory
