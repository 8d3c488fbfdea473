"""GRUE IMDB text continuation: continue the first half of a movie review so that it turns positive.

Hub: ``stanfordnlp/imdb`` (``text``, ``label``: 0 negative, 1 positive). The prompt is the first half of
the review's words (HTML line breaks removed), the reference the second half, ``meta["label"]`` the
review's own sentiment. As in GRUE, ``val`` is a seeded share of the hub's train split.

Offline: whole reviews written from hand-made pieces (the sentiment task's titles, people, settings
and plot set-ups, plus opinion sentences about acting, script, pacing, look, music and ending written
here), positive or negative with an occasional sentence of the other polarity, cut in half the same way.

Reward: the probability that the review (prompt + continuation, as in GRUE) is positive, from
``classifier``: ``trained`` (a logistic head on the bundled sentence encoder, trained on this task's
offline reviews; see `sentiment_classifier`), ``vader`` (VADER's compound score mapped to [0, 1]) or a
local/hub sequence-classification model (GRUE used ``lvwerra/distilbert-imdb``, label 1).
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from lmgym.data.hub import HubSpec, get_field, load_rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks import sentiment as pieces
from lmgym.data.tasks.common import Affine, LazyReward, build_task, carve, resolve_sizes, take
from lmgym.models.classifiers import EmbeddingClassifier, cached_classifier
from lmgym.rewards.base import Reward

HUB = HubSpec("stanfordnlp/imdb", None, ("train", "test"), ("text", "label"))
OFFLINE_SIZES = (800, 100, 100)
HUB_TEST_SIZE = 5000  # GRUE scores a seeded 5,000 of the hub's 25,000 test reviews
MAX_NEW_TOKENS = 48  # GRUE's episode length for IMDB
METRICS = ("sentiment", "perplexity", "diversity")
POSITIVE, NEGATIVE = 1, 0

# fmt: off
_ASPECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # aspect: (positive sentences, negative sentences); {actor}, {actor2}, {director}, {role} are filled in.
    "acting": (
        ("{actor} is wonderful as {role}, and every small gesture feels true.",
         "{actor} gives a warm, generous performance as {role}.",
         "The cast is excellent, with {actor2} especially delightful in a small part.",
         "{actor} makes {role} funny, sharp and completely believable.",
         "I loved the chemistry between {actor} and {actor2}; their scenes together are a joy."),
        ("{actor} is badly miscast as {role} and never seems comfortable.",
         "The acting is stiff, and {actor2} delivers every line as if reading it for the first time.",
         "{actor} plays {role} with one bored expression from start to finish.",
         "There is no chemistry at all between {actor} and {actor2}, which kills the central relationship.",
         "The performances are flat and forgettable, even from a reliable actor like {actor}."),
    ),
    "script": (
        ("The script is clever and full of lines I am still quoting.",
         "The writing is smart, honest and surprisingly funny.",
         "Every scene earns its place, and the dialogue sounds like real people talking.",
         "The story builds beautifully toward a moving final act."),
        ("The script is lazy and full of clichés we have seen a hundred times.",
         "The dialogue is clumsy, and the plot holes are impossible to ignore.",
         "The story makes no sense, and the twist is obvious from the first ten minutes.",
         "The writing is dull, and most scenes simply repeat what we already know."),
    ),
    "pacing": (
        ("The pacing is perfect; the time flies by.",
         "It moves with confidence and never wastes a minute.",
         "{director} keeps the tension high without rushing the quiet moments."),
        ("The pacing is painfully slow, and I checked my watch more than once.",
         "It drags terribly in the middle and never recovers.",
         "{director} lets every scene run far too long, and the film feels endless."),
    ),
    "look": (
        ("The photography is gorgeous, and some shots are simply stunning.",
         "It looks beautiful, with rich colours and elegant camera work.",
         "The production design is superb and makes the world feel lived in."),
        ("The photography is ugly and murky, and half the scenes are too dark to follow.",
         "It looks cheap, with shaky camera work and awkward editing.",
         "The effects are poor and the sets look like cardboard."),
    ),
    "music": (
        ("The score is lovely and lifts every scene it touches.",
         "The soundtrack is a real highlight, warm and memorable."),
        ("The score is loud and annoying, telling us what to feel in every scene.",
         "The music is forgettable at best and irritating at worst."),
    ),
    "ending": (
        ("The ending is satisfying and genuinely touching.",
         "The final scene is brilliant and left the whole audience smiling."),
        ("The ending is a mess, rushed and unsatisfying.",
         "The final scene is so silly that people around me laughed at the wrong moment."),
    ),
}
_VERDICTS = (
    ("Highly recommended: {score} out of 10.",
     "I enjoyed every minute and cannot wait to see it again.",
     "One of the best films I have seen this year, and I would happily recommend it to anyone.",
     "A beautiful, funny and moving film; {score} out of 10 from me.",
     "Go and see it; you will not regret it."),
    ("Avoid it: {score} out of 10.",
     "I was bored and disappointed, and I would not recommend it to anyone.",
     "One of the worst films I have seen this year, and a complete waste of time.",
     "A dull, silly and tiresome film; {score} out of 10 from me.",
     "Skip it; there are far better ways to spend two hours."),
)
_OPENINGS = (
    "{title} is {a_genre} from {director} in which {setup}.",
    "I watched {title}, {a_genre} starring {actor}, {when}.",
    "{director}'s {genre} {title} is set in {setting}, where {setup}.",
    "In {title}, {actor} stars as {role} in {setting}.",
    "{title} runs {runtime} and follows {role} in {setting}.",
    "The premise of {title} is simple: {setup}.",
)
_SECOND_OPENINGS = (
    "{actor2} plays the friend who keeps turning up at the worst possible time.",
    "It is {director}'s {ordinal} film, and the first I have seen in a cinema.",
    "The story covers a single season and stays close to {role}.",
    "Most of it takes place in two or three rooms.",
    "I went in knowing almost nothing about it.",
)
_CONTRAST = ("Still, ", "That said, ", "To be fair, ", "Even so, ")
# fmt: on
_POS_SCORES, _NEG_SCORES = ("7", "8", "9", "10"), ("1", "2", "3", "4")


def _slots(rng: random.Random) -> dict[str, str]:
    genre = rng.choice(pieces._GENRES)
    actor = pieces._name(rng)
    actor2 = pieces._name(rng)
    return {
        "title": rng.choice(pieces._TITLES),
        "genre": genre,
        "a_genre": pieces._article(genre),
        "director": pieces._name(rng),
        "actor": actor,
        "actor2": actor2 if actor2 != actor else pieces._name(rng),
        "role": rng.choice(pieces._ROLES),
        "setting": rng.choice(pieces._SETTINGS),
        "setup": rng.choice(pieces._SETUPS),
        "when": rng.choice(pieces._WHEN),
        "runtime": rng.choice(pieces._RUNTIMES),
        "ordinal": rng.choice(pieces._ORDINALS),
    }


def write_review(rng: random.Random, label: int) -> str:
    """One review of the given polarity: two neutral opening sentences, three to five opinions (one of
    them, now and then, of the other polarity, introduced as a contrast) and a verdict."""
    slots = _slots(rng)
    good = label == POSITIVE
    sentences = [rng.choice(_OPENINGS), rng.choice(_SECOND_OPENINGS)]
    aspects = rng.sample(list(_ASPECTS), rng.randint(3, 5))
    contrast_at = rng.randrange(1, len(aspects)) if rng.random() < 0.3 else -1
    for i, aspect in enumerate(aspects):
        positive, negative = _ASPECTS[aspect]
        flip = i == contrast_at
        sentence = rng.choice(positive if good != flip else negative)
        if flip:  # lower-case the old first word unless it is a name slot or "I"
            keep = sentence.startswith(("{", "I "))
            sentence = rng.choice(_CONTRAST) + (sentence if keep else sentence[0].lower() + sentence[1:])
        sentences.append(sentence)
    slots["score"] = rng.choice(_POS_SCORES if good else _NEG_SCORES)
    sentences.append(rng.choice(_VERDICTS[0 if good else 1]))
    text = " ".join(sentences).format(**slots)
    return text[0].upper() + text[1:]


def offline_rows(seed: int, n_train: int, n_test: int) -> dict[str, list[dict[str, Any]]]:
    """Hub-format rows (``text``, ``label``), balanced, distinct, train and test drawn from separate streams."""
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for split, n, stream in (("train", n_train, 0), ("test", n_test, 1)):
        rng = random.Random(seed * 7_919 + stream)
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            label = len(rows) % 2  # alternate, so any prefix is balanced
            text = write_review(rng, label)
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
        out[split] = rows
    return out


def review_halves(text: str) -> tuple[str, str]:
    """(first half, second half) of the review's words, as GRUE's prompt and reference."""
    words = text.replace("<br />", " ").split()
    cut = len(words) // 2
    return " ".join(words[:cut]), " ".join(words[cut:])


def _convert(row: dict[str, Any], origin: str, index: int) -> Sample | None:
    text = get_field(row, "text", origin, index, str)
    label = int(get_field(row, "label", origin, index, (int, bool)))
    prompt, rest = review_halves(text)
    if not prompt or not rest:
        return None  # a review of one word has no half to continue
    return Sample(id="", prompt=prompt, references=(rest,), meta={"label": label})


def sentiment_reward(classifier: str) -> Reward:
    """P(positive) of prompt + continuation from ``classifier`` (see the module docstring)."""
    if classifier == "vader":
        from lmgym.rewards.sentiment import VaderSentiment

        return LazyReward("sentiment", lambda: Affine(VaderSentiment(), 0.5, 0.5))  # compound [-1, 1] → [0, 1]
    if classifier == "trained":

        def build_trained() -> Reward:
            from lmgym.rewards.classifier import ClassifierReward

            return ClassifierReward(sentiment_classifier(), POSITIVE, True, separator=" ", name="sentiment")

        return LazyReward("sentiment", build_trained)

    def build_model() -> Reward:
        from lmgym.rewards.classifier import ClassifierReward

        return ClassifierReward(classifier, label=POSITIVE, include_prompt=True)

    return LazyReward("sentiment", build_model)


@register_task("imdb", "GRUE IMDB: continue half a movie review positively (hub stanfordnlp/imdb or offline).")
def imdb_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    classifier: str = "trained",
) -> Task:
    """GRUE IMDB: continue half a movie review positively (hub stanfordnlp/imdb or offline)."""
    offline_sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, offline=True)
    loaded = load_rows(
        "imdb",
        HUB,
        source,
        path,
        lambda: offline_rows(seed, offline_sizes["train"] + offline_sizes["val"], offline_sizes["test"]),
    )
    offline = loaded.source == "offline"
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, offline)
    if not offline and sizes["test"] is None:
        sizes["test"] = HUB_TEST_SIZE
    # GRUE holds out a share of the train split for validation (IMDB has no validation split).
    n_val_rows = sizes["val"] if sizes["val"] is not None else len(loaded.splits["train"]) // 5
    train_rows, val_rows = carve(loaded.splits["train"], n_val_rows, seed)
    rows = {
        "train": take(train_rows, sizes["train"], seed),
        "val": val_rows,
        "test": take(loaded.splits["test"], sizes["test"], seed),
    }
    return build_task(
        "imdb",
        rows,
        _convert,
        sentiment_reward(classifier),
        "Continue the first half of a movie review so that it reads as positive; reward = "
        f"P(positive) from the {classifier} classifier.",
        loaded.source,
        METRICS,
        MAX_NEW_TOKENS,
    )


SENTIMENT_LABELS = ("negative", "positive")  # index = the IMDB label (0 negative, 1 positive)


@lru_cache(maxsize=1)
def sentiment_classifier(n_reviews: int = 240, seed: int = 12_345) -> EmbeddingClassifier:
    """Positive vs negative, fit on offline IMDB reviews (whole reviews and their second halves, since
    the reward reads prompt + continuation while a continuation alone must also read as positive)."""

    def data() -> tuple[list[str], list[str]]:
        rows = offline_rows(seed, n_reviews, 0)["train"]
        texts = [r["text"] for r in rows] + [review_halves(r["text"])[1] for r in rows]
        labels = [SENTIMENT_LABELS[r["label"]] for r in rows] * 2
        return texts, labels

    return cached_classifier("imdb-sentiment", data, SENTIMENT_LABELS)
