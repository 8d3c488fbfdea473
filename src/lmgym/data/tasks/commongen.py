"""GRUE CommonGen: write one everyday sentence that uses every concept of a set.

Hub: ``allenai/common_gen`` (``concept_set_idx``, ``concepts``, ``target``; one row per reference
sentence). Rows are grouped by concept set into one `Sample` whose references are all its sentences.
The hub's test split has no references, so ``test`` is the hub's validation split and ``val`` a seeded
share of the train concept sets. The prompt follows GRUE: ``generate a sentence with: dog catch ball.``

Offline: concept sets drawn from a lexicon written here (who does what to what, and where), each with
three reference sentences from different sentence patterns, in the hub's row format.

Reward: METEOR against the references plus a penalty when the output merely repeats the concept list
(``reward: meteor``, the default), or CIDEr/SPICE/ROUGE-1 from the metric registry.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from lmgym.data.hub import DataFormatError, HubSpec, Rows, get_field, load_rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks.common import (
    LazyReward,
    WeightedSum,
    build_task,
    carve,
    choose,
    metric_reward,
    resolve_sizes,
    take,
)
from lmgym.errors import InputError
from lmgym.rewards.base import Reward

HUB = HubSpec("allenai/common_gen", None, ("train", "validation"), ("concept_set_idx", "concepts", "target"))
OFFLINE_SIZES = (1000, 100, 100)
MAX_NEW_TOKENS = 20
PREFIX = "generate a sentence with: "
METRICS = ("meteor", "rouge", "bleu", "cider", "spice", "bertscore", "diversity")

# fmt: off
# Agents: noun, kind. Verbs: base, 3rd person, -ing, past, agent kind, objects (noun, determiner), places.
_AGENTS = (
    ("man", "person"), ("woman", "person"), ("boy", "person"), ("girl", "person"), ("child", "person"),
    ("farmer", "person"), ("chef", "person"), ("student", "person"), ("player", "person"), ("worker", "person"),
    ("teacher", "person"), ("artist", "person"), ("doctor", "person"), ("tourist", "person"),
    ("dog", "animal"), ("cat", "animal"), ("horse", "animal"), ("bird", "animal"),
)
_PLACES = {
    "park": "in", "kitchen": "in", "field": "in", "beach": "on", "street": "on", "garden": "in",
    "classroom": "in", "market": "at", "river": "by", "stage": "on", "lake": "by", "office": "in",
    "yard": "in", "forest": "in", "studio": "in", "barn": "in", "pool": "at", "road": "on",
}
_VERBS = (
    ("throw", "throws", "throwing", "threw", "person", (("ball", "a"), ("stone", "a"), ("frisbee", "a")),
     ("park", "beach", "field", "yard")),
    ("catch", "catches", "catching", "caught", "any", (("ball", "a"), ("frisbee", "a"), ("fish", "a")),
     ("park", "beach", "field", "river", "lake")),
    ("cut", "cuts", "cutting", "cut", "person", (("bread", "some"), ("onion", "an"), ("paper", "some"),
     ("rope", "a")), ("kitchen", "classroom", "studio")),
    ("cook", "cooks", "cooking", "cooked", "person", (("soup", "some"), ("meal", "a"), ("egg", "an"),
     ("pasta", "some")), ("kitchen",)),
    ("paint", "paints", "painting", "painted", "person", (("wall", "a"), ("picture", "a"), ("fence", "a"),
     ("portrait", "a")), ("studio", "yard", "garden", "classroom")),
    ("read", "reads", "reading", "read", "person", (("book", "a"), ("letter", "a"), ("newspaper", "a"),
     ("map", "a")), ("park", "classroom", "office", "garden", "beach")),
    ("ride", "rides", "riding", "rode", "person", (("bike", "a"), ("horse", "a"), ("wave", "a"),
     ("scooter", "a")), ("street", "road", "beach", "field", "park")),
    ("kick", "kicks", "kicking", "kicked", "person", (("ball", "a"), ("can", "a")), ("field", "street", "park")),
    ("plant", "plants", "planting", "planted", "person", (("tree", "a"), ("flower", "a"), ("seed", "a")),
     ("garden", "field", "yard")),
    ("wash", "washes", "washing", "washed", "person", (("dish", "a"), ("car", "a"), ("shirt", "a"),
     ("window", "a")), ("kitchen", "yard", "street", "river")),
    ("chase", "chases", "chasing", "chased", "animal", (("ball", "a"), ("bird", "a"), ("cat", "a"),
     ("stick", "a")), ("park", "yard", "field", "street", "garden")),
    ("eat", "eats", "eating", "ate", "any", (("apple", "an"), ("sandwich", "a"), ("carrot", "a")),
     ("park", "kitchen", "field", "barn", "garden")),
    ("drink", "drinks", "drinking", "drank", "any", (("water", "some"), ("tea", "some"), ("milk", "some")),
     ("kitchen", "river", "lake", "office", "barn")),
    ("carry", "carries", "carrying", "carried", "person", (("box", "a"), ("basket", "a"), ("bag", "a"),
     ("ladder", "a")), ("street", "market", "barn", "road", "office")),
    ("sell", "sells", "selling", "sold", "person", (("fruit", "some"), ("fish", "some"), ("flower", "a"),
     ("hat", "a")), ("market", "street", "beach")),
    ("play", "plays", "playing", "played", "person", (("guitar", "a"), ("piano", "a"), ("drum", "a"),
     ("violin", "a")), ("stage", "park", "street", "studio", "classroom")),
    ("climb", "climbs", "climbing", "climbed", "person", (("tree", "a"), ("ladder", "a"), ("wall", "a"),
     ("rock", "a")), ("forest", "park", "garden", "yard")),
    ("feed", "feeds", "feeding", "fed", "person", (("horse", "a"), ("bird", "a"), ("dog", "a"), ("cat", "a")),
     ("barn", "park", "yard", "field", "lake")),
    ("push", "pushes", "pushing", "pushed", "person", (("cart", "a"), ("stroller", "a"), ("swing", "a"),
     ("car", "a")), ("market", "park", "road", "street")),
    ("write", "writes", "writing", "wrote", "person", (("letter", "a"), ("poem", "a"), ("note", "a")),
     ("classroom", "office", "park", "garden")),
    ("build", "builds", "building", "built", "person", (("sandcastle", "a"), ("fence", "a"), ("shed", "a"),
     ("bench", "a")), ("beach", "yard", "garden", "field")),
    ("hold", "holds", "holding", "held", "person", (("umbrella", "an"), ("cup", "a"), ("stick", "a"),
     ("flag", "a")), ("street", "stage", "market", "park", "road")),
    ("fix", "fixes", "fixing", "fixed", "person", (("bike", "a"), ("roof", "a"), ("fence", "a"), ("car", "a")),
     ("yard", "street", "barn", "road")),
    ("jump", "jumps", "jumping", "jumped", "any", (("fence", "a"), ("puddle", "a"), ("rope", "a")),
     ("park", "field", "street", "yard")),
)
_SECOND = (  # intransitive actions for five-concept sets
    ("stand", "stands", "standing", "stood"), ("sit", "sits", "sitting", "sat"),
    ("smile", "smiles", "smiling", "smiled"), ("wait", "waits", "waiting", "waited"),
    ("laugh", "laughs", "laughing", "laughed"), ("kneel", "kneels", "kneeling", "knelt"),
)
_ADJ = ("young", "old", "tall", "happy", "tired", "small", "busy", "quiet")
_WHEN = ("in the morning", "after lunch", "in the evening", "on a sunny day", "before dinner", "every weekend")
# fmt: on


def _np(det: str, noun: str) -> str:
    return f"{det} {noun}" if det != "the" else f"the {noun}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _indef(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def draw_concept_set(rng: random.Random) -> tuple[list[str], list[str]]:
    """(concepts in base form, three reference sentences that use all of them)."""
    base, third, ing, past, kind, objects, places = rng.choice(_VERBS)
    agents = [a for a, k in _AGENTS if kind == "any" or k == kind]
    agent = rng.choice(agents)
    obj, det = rng.choice(objects)
    if obj == agent:
        obj, det = next((o, d) for o, d in objects if o != agent)
    place = rng.choice(places)
    prep = _PLACES[place]
    size = rng.choice((3, 4, 4, 5))
    adj, when = rng.choice(_ADJ), rng.choice(_WHEN)
    a_obj, the_obj = _np(det, obj), f"the {obj}"
    where = f"{prep} the {place}"
    if size == 3:
        concepts = [agent, base, obj]
        refs = [
            f"{_cap(_indef(agent))} {third} {a_obj} {when}.",
            f"The {agent} is {ing} {a_obj}.",
            f"{_cap(_indef(adj))} {agent} {past} {the_obj} {where}.",
        ]
    elif size == 4:
        concepts = [agent, base, obj, place]
        refs = [
            f"{_cap(_indef(agent))} {third} {a_obj} {where}.",
            f"{_cap(where)}, the {agent} is {ing} {a_obj}.",
            f"{_cap(_indef(adj))} {agent} {past} {the_obj} {where} {when}.",
        ]
    else:
        b2, third2, ing2, _ = rng.choice(_SECOND)
        concepts = [agent, b2, base, obj, place]
        refs = [
            f"{_cap(_indef(agent))} {third2} {where} and {third} {a_obj}.",
            f"{_cap(where)}, {_indef(agent)} is {ing2} while {ing} {a_obj}.",
            f"The {adj} {agent} {third2} {where}, {ing} {the_obj}.",
        ]
    rng.shuffle(concepts)
    return concepts, refs


def offline_rows(seed: int, n_train: int, n_validation: int) -> dict[str, list[dict[str, Any]]]:
    """Hub-format rows (one per reference sentence) for ``n`` distinct concept sets per split."""
    rng = random.Random(seed)
    seen: set[frozenset[str]] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    idx = 0
    for split, n in (("train", n_train), ("validation", n_validation)):
        rows: list[dict[str, Any]] = []
        made, attempts = 0, 0
        while made < n:
            attempts += 1
            if attempts > 100 * n + 1000:
                raise InputError(f"could only draw {made} distinct concept sets for {split}, asked for {n}")
            concepts, refs = draw_concept_set(rng)
            key = frozenset(concepts)
            if key in seen:
                continue
            seen.add(key)
            rows += [{"concept_set_idx": idx, "concepts": concepts, "target": ref} for ref in refs]
            idx, made = idx + 1, made + 1
        out[split] = rows
    return out


def prompt_for(concepts: list[str]) -> str:
    return PREFIX + " ".join(concepts) + "."


def group_rows(rows: Rows) -> Rows:
    """One row per concept set, with every non-empty target (in order of appearance) as ``targets``."""
    groups: OrderedDict[Any, dict[str, Any]] = OrderedDict()
    for index, row in enumerate(rows):
        key = get_field(row, "concept_set_idx", rows.origin, index)
        concepts = get_field(row, "concepts", rows.origin, index, (list, tuple))
        if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
            raise DataFormatError(f"{rows.origin} row {index}: field 'concepts' must be a non-empty list of words")
        target = get_field(row, "target", rows.origin, index, str).strip()
        group = groups.setdefault(key, {"concept_set_idx": key, "concepts": list(concepts), "targets": []})
        if target:
            group["targets"].append(target)
    return Rows([g for g in groups.values() if g["targets"]], rows.origin + " (grouped by concept set)")


def _convert(row: dict[str, Any], origin: str, index: int) -> Sample:
    concepts = list(row["concepts"])
    return Sample(
        id="",
        prompt=prompt_for(concepts),
        references=tuple(row["targets"]),
        meta={"concepts": concepts, "concept_set_idx": row["concept_set_idx"]},
    )


def commongen_reward(reward: str) -> Reward:
    """The task reward named ``reward``; METEOR also pays the copy penalty (GRUE's repeat penalty)."""

    def meteor_with_penalty() -> Reward:
        return LazyReward(
            "meteor-copy_penalty",
            lambda: WeightedSum(
                [(1.0, metric_reward("meteor")), (1.0, metric_reward("commongen_copy_penalty"))], "meteor-copy_penalty"
            ),
        )

    return choose(
        "reward",
        reward,
        {
            "meteor": meteor_with_penalty,
            "cider": lambda: metric_reward("cider"),
            "spice": lambda: metric_reward("spice"),
            "rouge1": lambda: metric_reward("rouge", key="rouge-1"),
        },
    )


@register_task(
    "commongen", "GRUE CommonGen: a sentence using every concept of a set (hub allenai/common_gen or offline)."
)
def commongen_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    reward: str = "meteor",
) -> Task:
    """GRUE CommonGen: a sentence using every concept of a set (hub allenai/common_gen or offline)."""
    offline_sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, offline=True)
    loaded = load_rows(
        "commongen",
        HUB,
        source,
        path,
        lambda: offline_rows(seed, offline_sizes["train"] + offline_sizes["val"], offline_sizes["test"]),
    )
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_SIZES, loaded.source == "offline")
    train_sets = group_rows(loaded.splits["train"])
    n_val_sets = sizes["val"] if sizes["val"] is not None else max(1, len(train_sets) // 50)
    train_sets, val_sets = carve(train_sets, n_val_sets, seed)
    rows = {
        "train": take(train_sets, sizes["train"], seed),
        "val": val_sets,
        "test": take(group_rows(loaded.splits["validation"]), sizes["test"], seed),
    }
    return build_task(
        "commongen",
        rows,
        _convert,
        commongen_reward(reward),
        f"Write one sentence that uses every given concept; reward {reward}.",
        loaded.source,
        METRICS,
        MAX_NEW_TOKENS,
    )
