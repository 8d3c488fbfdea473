"""GRUE DailyDialog: say the next utterance of a conversation, given its last five turns.

Hub: ``li2017dailydialog/daily_dialog`` (``dialog``: list of utterances, ``act``: one dialogue act per
utterance, 1 inform, 2 question, 3 directive, 4 commissive; ``emotion``). Every turn after the first
becomes a `Sample`: the prompt is the (at most) five turns before it joined by `` <EOU> `` and ending
in one, the reference is the turn, ``meta["intent"]`` its act's name.

Offline: two-person dialogues on everyday topics (dinner plans, shopping, travel, work, health,
weekend plans) that follow act patterns such as question → inform → directive → commissive, written
from per-topic utterance pools with slots, in the hub's row format.

Reward (GRUE): the probability, under an intent classifier, that the generated turn has the
reference turn's intent, blended with METEOR: ``intent_weight · P(intent) + (1 − intent_weight) ·
METEOR``. The intent classifier is trained here on the offline dialogues (see `intent_classifier`).
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from lmgym.data.hub import DataFormatError, HubSpec, get_field, load_rows
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks.common import (
    HUB_SPLITS,
    LazyReward,
    WeightedSum,
    describe_source,
    metric_reward,
    resolve_sizes,
    to_samples,
)
from lmgym.errors import InputError
from lmgym.models.classifiers import EmbeddingClassifier, cached_classifier
from lmgym.rewards.base import Reward

INTENT_LABELS = ("inform", "question", "directive", "commissive")  # DailyDialog's dialogue acts 1-4

HUB = HubSpec("li2017dailydialog/daily_dialog", None, ("train", "validation", "test"), ("dialog", "act"))
OFFLINE_DIALOGUES = (300, 40, 40)  # dialogues per split; each gives 3-7 samples
CONTEXT_TURNS = 5
EOU = " <EOU> "
MAX_NEW_TOKENS = 20
METRICS = ("intent_accuracy", "meteor", "bleu", "diversity", "perplexity")
INFORM, QUESTION, DIRECTIVE, COMMISSIVE = 1, 2, 3, 4

# fmt: off
_SLOTS = {
    "food": ("pizza", "sushi", "curry", "pasta", "noodles", "tacos", "a salad", "fish and chips"),
    "place": ("the station", "the market", "the museum", "the park", "the library", "the mall", "the beach"),
    "time": ("seven", "half past six", "eight", "noon", "nine tomorrow morning", "five"),
    "day": ("Monday", "Friday", "Saturday", "Sunday", "the weekend", "next week"),
    "item": ("a jacket", "a pair of shoes", "a lamp", "a backpack", "a phone case", "a scarf"),
    "price": ("twenty dollars", "fifty dollars", "thirty dollars", "twelve dollars", "ninety dollars"),
    "city": ("Paris", "Rome", "Tokyo", "Berlin", "Lisbon", "Chicago"),
    "name": ("Tom", "Anna", "Mr. Lee", "Sarah", "David", "Maria"),
}
_POOLS: dict[str, dict[int, tuple[str, ...]]] = {
    "dinner": {
        QUESTION: ("What would you like to eat tonight?", "Have you ever tried the {food} at the corner place?",
                   "Where should we meet for dinner?", "What time does the restaurant open?",
                   "Do you want to eat out tonight?", "How about {food} for dinner?"),
        INFORM: ("I had {food} for lunch, so something else would be nice.",
                 "The new place near {place} serves great {food}.", "The restaurant opens at {time}.",
                 "I am not very hungry, but I could eat a little.", "They say the {food} there is the best in town."),
        DIRECTIVE: ("Please book a table for two at {time}.", "Let's meet in front of {place} at {time}.",
                    "Could you call them and ask if they have a table?",
                    "Why don't you choose the restaurant this time?"),
        COMMISSIVE: ("Sure, I will book the table right away.", "Okay, I'll be there at {time}.",
                     "No problem, I will call them after work.", "All right, I'll pick a place and let you know."),
    },
    "shopping": {
        QUESTION: ("How much is this {item}?", "Do you have this in a larger size?", "Can I pay by card?",
                   "Is there a discount on {item} today?", "Where can I find {item}?"),
        INFORM: ("It costs {price}.", "We only have the small size left, I'm afraid.",
                 "Everything in this row is half price until {day}.", "You can find {item} near the entrance.",
                 "I bought {item} here last month and it is still like new."),
        DIRECTIVE: ("Please wait here while I check the storeroom.", "Try it on, the fitting room is over there.",
                    "Could you wrap it as a gift, please?", "Please sign here and keep the receipt."),
        COMMISSIVE: ("I'll take it.", "I will come back on {day} to pick it up.",
                     "Okay, I'll wait here.", "Sure, I will wrap it for you."),
    },
    "travel": {
        QUESTION: ("When does the next train to {city} leave?", "Have you been to {city} before?",
                   "How long does the flight take?", "Which hotel are you staying at in {city}?",
                   "Do I need a ticket for the museum?"),
        INFORM: ("The next train leaves at {time}.", "I went to {city} two years ago and loved it.",
                 "The flight takes about three hours.", "Our hotel is close to {place}.",
                 "Tickets for the museum are sold at the door."),
        DIRECTIVE: ("Please show me your passport.", "Let's take a taxi to {place}.",
                    "Could you help me with my bags?", "Remember to bring your ticket on {day}."),
        COMMISSIVE: ("I'll bring it, don't worry.", "Sure, I will help you carry them.",
                     "I promise I will send you photos from {city}.", "Okay, I'll get a taxi for us."),
    },
    "work": {
        QUESTION: ("Have you finished the report?", "When is the meeting with {name}?",
                   "Could the deadline move to {day}?", "Who is in charge of the new project?",
                   "Did {name} send you the numbers?"),
        INFORM: ("The meeting with {name} is on {day} at {time}.", "I finished the first part of the report yesterday.",
                 "{name} is in charge of the new project.", "The numbers look much better than last month.",
                 "The printer on our floor is broken again."),
        DIRECTIVE: ("Please send me the report before {day}.", "Could you prepare the slides for the meeting?",
                    "Let's go over the numbers together after lunch.", "Please ask {name} to call me back."),
        COMMISSIVE: ("I will send it to you by {day}.", "Sure, I'll prepare the slides this afternoon.",
                     "I'll tell {name} as soon as I see him.", "Okay, I will finish it tonight."),
    },
    "health": {
        QUESTION: ("How are you feeling today?", "Have you seen a doctor about your back?",
                   "How long have you had this cough?", "Are you taking any medicine?",
                   "Do you exercise every week?"),
        INFORM: ("I have had a headache since {day}.", "I feel much better than yesterday.",
                 "The doctor said I should rest for a few days.", "I go swimming twice a week.",
                 "I have been sleeping badly lately."),
        DIRECTIVE: ("Please take this medicine twice a day.", "You should drink more water and rest.",
                    "Come back and see me on {day}.", "Try to walk for half an hour every day."),
        COMMISSIVE: ("I will take it after every meal.", "Okay, I'll come back on {day}.",
                     "I promise I'll get more rest.", "I will start walking tomorrow."),
    },
    "weekend": {
        QUESTION: ("What are you doing on {day}?", "Would you like to go to {place} with me?",
                   "Have you seen the new film everyone is talking about?", "Is the weather going to be nice?"),
        INFORM: ("I am visiting my parents on {day}.", "There is a concert at {place} on {day}.",
                 "The forecast says it will be sunny all weekend.", "I saw that film last week; it was funny."),
        DIRECTIVE: ("Let's go to {place} together on {day}.", "Please bring your camera.",
                    "Call me when you are ready to leave.", "Why don't you join us for the concert?"),
        COMMISSIVE: ("Sure, I'd love to come along.", "I'll call you as soon as I'm ready.",
                     "I will bring my camera.", "Okay, I'll meet you at {place} at {time}."),
    },
}
# Act patterns of whole dialogues: a question is answered, a directive accepted, and so on.
_FLOWS = (
    (QUESTION, INFORM, QUESTION, INFORM, DIRECTIVE, COMMISSIVE),
    (QUESTION, INFORM, DIRECTIVE, COMMISSIVE),
    (INFORM, QUESTION, INFORM, DIRECTIVE, COMMISSIVE, INFORM),
    (DIRECTIVE, QUESTION, INFORM, COMMISSIVE),
    (QUESTION, INFORM, INFORM, QUESTION, INFORM),
    (INFORM, DIRECTIVE, COMMISSIVE, QUESTION, INFORM, DIRECTIVE, COMMISSIVE),
    (QUESTION, QUESTION, INFORM, DIRECTIVE, COMMISSIVE),
)
# fmt: on


def _fill(template: str, rng: random.Random) -> str:
    return template.format(**{k: rng.choice(v) for k, v in _SLOTS.items() if "{" + k + "}" in template})


def write_dialogue(rng: random.Random) -> tuple[list[str], list[int]]:
    """(utterances, acts) of one dialogue on one topic, no utterance repeated."""
    pool = _POOLS[rng.choice(list(_POOLS))]
    acts = list(rng.choice(_FLOWS))
    used: set[str] = set()
    utterances = []
    for act in acts:
        choices = [t for t in pool[act] if t not in used] or list(pool[act])
        template = rng.choice(choices)
        used.add(template)
        utterances.append(_fill(template, rng))
    return utterances, acts


def offline_rows(seed: int, n_train: int, n_validation: int, n_test: int) -> dict[str, list[dict[str, Any]]]:
    """Hub-format rows (``dialog``, ``act``, ``emotion``), distinct dialogues across splits."""
    rng = random.Random(seed * 4_099 + 11)
    seen: set[tuple[str, ...]] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            dialog, acts = write_dialogue(rng)
            if tuple(dialog) in seen:
                continue
            seen.add(tuple(dialog))
            rows.append({"dialog": dialog, "act": acts, "emotion": [0] * len(acts)})
        out[split] = rows
    return out


def _convert(row: dict[str, Any], origin: str, index: int) -> list[Sample]:
    dialog = get_field(row, "dialog", origin, index, (list, tuple))
    acts = get_field(row, "act", origin, index, (list, tuple))
    if len(dialog) != len(acts):
        raise DataFormatError(f"{origin} row {index}: {len(dialog)} utterances but {len(acts)} acts")
    turns = [str(u).strip() for u in dialog]
    samples = []
    for i in range(1, len(turns)):
        act = int(acts[i])
        if not 1 <= act <= len(INTENT_LABELS):
            raise DataFormatError(f"{origin} row {index}: act {act} of turn {i} is not 1-4")
        if not turns[i]:
            continue
        context = turns[max(0, i - CONTEXT_TURNS) : i]
        samples.append(
            Sample(
                id="",
                prompt=EOU.join(context) + EOU.rstrip(),
                references=(turns[i],),
                meta={"intent": INTENT_LABELS[act - 1], "context": context},
            )
        )
    return samples


@lru_cache(maxsize=1)
def intent_classifier(n_dialogues: int = 300, seed: int = 12_345) -> EmbeddingClassifier:
    """The dialogue act of one utterance, fit on the turns of offline DailyDialog dialogues."""

    def data() -> tuple[list[str], list[str]]:
        texts, labels = [], []
        for row in offline_rows(seed, n_dialogues, 0, 0)["train"]:
            for utterance, act in zip(row["dialog"], row["act"], strict=True):
                texts.append(utterance)
                labels.append(INTENT_LABELS[act - 1])
        # Deduplicate (templates repeat) so the hash and the fit see each distinct text once.
        pairs = sorted(set(zip(texts, labels, strict=True)))
        random.Random(seed).shuffle(pairs)
        return [t for t, _ in pairs], [y for _, y in pairs]

    return cached_classifier("dailydialog-intent", data, INTENT_LABELS)


def dailydialog_reward(intent_weight: float) -> Reward:
    """intent_weight · P(reference intent | generation) + (1 − intent_weight) · METEOR."""
    if not 0 <= intent_weight <= 1:
        raise InputError(f"task_args.intent_weight must be in [0, 1], got {intent_weight}")

    def build() -> Reward:
        from lmgym.rewards.classifier import ClassifierReward

        intent = ClassifierReward(intent_classifier(), "meta:intent", name="intent")
        parts = [(intent_weight, intent)]
        if intent_weight < 1:
            parts.append((1 - intent_weight, metric_reward("meteor")))
        return WeightedSum(parts, "intent+meteor")

    return LazyReward("intent+meteor", build)


def annotate_predicted_intent(generations: list[str], meta: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``meta`` with ``predicted_intent`` (the intent classifier's label of each generation) for the
    ``intent_accuracy`` metric."""
    predicted = intent_classifier().predict(generations)
    return [{**m, "predicted_intent": p} for m, p in zip(meta, predicted, strict=True)]


@register_task("dailydialog", "GRUE DailyDialog: the next turn of a conversation (hub daily_dialog or offline).")
def dailydialog_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    intent_weight: float = 0.75,
) -> Task:
    """GRUE DailyDialog: the next turn of a conversation (hub daily_dialog or offline)."""
    loaded = load_rows("dailydialog", HUB, source, path, lambda: offline_rows(seed, *OFFLINE_DIALOGUES))
    # Sizes count samples (turns), not dialogues; None keeps every turn of the split.
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_DIALOGUES, offline=False)
    splits = {}
    for ours, hub_split in HUB_SPLITS:
        samples = to_samples(loaded.splits[hub_split], "dailydialog", ours, _convert)
        n = sizes[ours]
        if n is not None and n < len(samples):
            keep = sorted(random.Random(seed).sample(range(len(samples)), n))
            samples = [samples[i] for i in keep]
        splits[ours] = samples
    return Task(
        name="dailydialog",
        splits=splits,
        reward=dailydialog_reward(intent_weight),
        description=f"Say the next turn of a dialogue; reward {intent_weight:g}·P(intent) + "
        f"{1 - intent_weight:g}·METEOR. Data: {describe_source('dailydialog', loaded.source)}.",
        metrics=METRICS,
        generation={"max_new_tokens": MAX_NEW_TOKENS},
        annotate=annotate_predicted_intent,
    )
