"""GRUE NarrativeQA: answer a question about a story from its summary.

Hub: ``deepmind/narrativeqa`` (``document`` with ``summary.text``, ``question.text``, ``answers``: a
list of ``{text, tokens}``). As in GRUE the context is the story's summary, not the full text; the
prompt is ``question: <question> context: <summary>``, the references are the (usually two) answers.

Offline: short stories written from slots (a hero, a helper, a place, a lost object, a rival, a
journey, an ending), each with who/what/where/why/how questions and two phrasings of each answer,
in the hub's row format.

Reward: ROUGE-L-max over the references (``rouge_l_max``), or METEOR.
"""

from __future__ import annotations

import random
from typing import Any

from lmgym.data.hub import DataFormatError, HubSpec, get_field, load_rows, records_of
from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks import sentiment as pieces
from lmgym.data.tasks.common import build_task, choose, metric_reward, resolve_sizes, take_splits
from lmgym.rewards.base import Reward

HUB = HubSpec("deepmind/narrativeqa", None, ("train", "validation", "test"), ("document", "question", "answers"))
OFFLINE_STORIES = (300, 30, 30)  # stories per split; each gives three questions
QUESTIONS_PER_STORY = 3
MAX_NEW_TOKENS = 16
METRICS = ("rouge_l_max", "meteor", "bleu", "bertscore")

# fmt: off
_ROLES = ("fisherman", "baker", "young sailor", "shepherd", "clockmaker", "apprentice", "miner", "weaver")
_HELPERS = (("an old owl", "owl"), ("a talking fox", "fox"), ("a kind innkeeper", "innkeeper"),
            ("a wandering monk", "monk"), ("a blind musician", "musician"), ("a stray dog", "dog"))
_VILLAGES = ("Penhallow", "Tresk", "Dunmere", "Vennick", "Whitcombe", "Alder Cross", "Kestrel Point")
_LOST = (("silver bell", "the village chapel"), ("golden key", "the town gate"), ("old map", "the harbour office"),
         ("copper compass", "the lighthouse"), ("wooden flute", "the school"), ("glass lantern", "the mill"))
_RIVALS = (("a greedy merchant", "merchant", "sold it in the market"),
           ("a jealous cousin", "cousin", "hid it in a well"),
           ("a band of thieves", "thieves", "buried it in the forest"),
           ("a proud knight", "knight", "locked it in a tower"))
_JOURNEYS = (("cross the frozen lake", "a boat"), ("climb the northern mountains", "a rope"),
             ("walk through the marshes", "a lamp"), ("sail along the coast", "a small boat"))
_REASONS = (("to save the harvest festival", "save the harvest festival"),
            ("to lift a curse on the village", "lift the curse"),
            ("to keep a promise to the mayor", "keep a promise to the mayor"),
            ("to win the hand of the miller's daughter", "marry the miller's daughter"))
_ENDINGS = (("returns home and rings the bell at midnight", "rings the bell at midnight"),
            ("becomes the keeper of the village", "becomes the village keeper"),
            ("opens an inn with the helper", "opens an inn"),
            ("marries the miller's daughter in spring", "gets married in spring"))
# fmt: on


def write_story(rng: random.Random) -> tuple[str, list[tuple[str, tuple[str, str]]]]:
    """(summary, [(question, (answer, other phrasing of the answer))])."""
    hero = pieces._name(rng)
    first = hero.split()[0]
    role, village = rng.choice(_ROLES), rng.choice(_VILLAGES)
    helper, helper_short = rng.choice(_HELPERS)
    lost, home_of_lost = rng.choice(_LOST)
    rival, rival_short, deed = rng.choice(_RIVALS)
    journey, tool = rng.choice(_JOURNEYS)
    reason, reason_short = rng.choice(_REASONS)
    ending, ending_short = rng.choice(_ENDINGS)
    summary = (
        f"{hero} is a {role} in the village of {village}. One winter the {lost} of {home_of_lost} disappears: "
        f"{rival} has stolen it and {deed}. {first} sets out to find it {reason}. On the way {first} meets "
        f"{helper}, who gives {first} {tool}. Together they {journey} and find the {lost}. "
        f"In the end {first} {ending}."
    )
    questions = [
        (f"Who is {hero}?", (f"a {role} in {village}", f"a {role}")),
        (f"What was stolen from {home_of_lost}?", (f"the {lost}", lost)),
        (f"Who stole the {lost}?", (rival, f"the {rival_short}")),
        (f"Why does {first} set out?", (reason, reason_short)),
        (f"Who does {first} meet on the way?", (helper, f"the {helper_short}")),
        (f"What does the {helper_short} give {first}?", (tool, tool.split()[-1])),
        (f"What happens to {first} in the end?", (ending, ending_short)),
        (f"Where does {first} live?", (f"in {village}", village)),
    ]
    return summary, questions


def offline_rows(seed: int, n_train: int, n_validation: int, n_test: int) -> dict[str, list[dict[str, Any]]]:
    """Hub-format rows, ``QUESTIONS_PER_STORY`` per story, stories distinct across splits."""
    rng = random.Random(seed * 2_609 + 3)
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        rows: list[dict[str, Any]] = []
        stories = 0
        while stories < n:
            summary, questions = write_story(rng)
            if summary in seen:
                continue
            seen.add(summary)
            stories += 1
            doc = {"id": f"offline-{len(seen):05d}", "kind": "offline", "summary": {"text": summary}, "text": summary}
            for question, answers in rng.sample(questions, QUESTIONS_PER_STORY):
                rows.append(
                    {
                        "document": doc,
                        "question": {"text": question, "tokens": question.split()},
                        "answers": [{"text": a, "tokens": a.split()} for a in answers],
                    }
                )
        out[split] = rows
    return out


def prompt_for(question: str, context: str) -> str:
    return f"question: {question} context: {context}"


def _convert(row: dict[str, Any], origin: str, index: int) -> Sample:
    document = get_field(row, "document", origin, index, dict)
    summary = document.get("summary")
    context = summary.get("text") if isinstance(summary, dict) else None
    if not isinstance(context, str) or not context.strip():
        raise DataFormatError(f"{origin} row {index}: field 'document.summary.text' is missing")
    question = get_field(row, "question", origin, index, dict).get("text")
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(f"{origin} row {index}: field 'question.text' is missing")
    answers = [a.get("text", "").strip() for a in records_of(get_field(row, "answers", origin, index))]
    answers = [a for a in answers if a]
    if not answers:
        raise DataFormatError(f"{origin} row {index}: field 'answers' holds no answer text")
    return Sample(
        id="",
        prompt=prompt_for(question.strip(), " ".join(context.split())),
        references=tuple(answers),
        meta={"document_id": document.get("id"), "question": question.strip()},
    )


def qa_reward(reward: str) -> Reward:
    return choose(
        "reward",
        reward,
        {"rouge_l_max": lambda: metric_reward("rouge_l_max"), "meteor": lambda: metric_reward("meteor")},
    )


@register_task(
    "narrativeqa", "GRUE NarrativeQA: answer a question about a story (hub deepmind/narrativeqa or offline)."
)
def narrativeqa_task(
    source: str = "auto",
    path: Any = None,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    reward: str = "rouge_l_max",
) -> Task:
    """GRUE NarrativeQA: answer a question about a story (hub deepmind/narrativeqa or offline)."""
    loaded = load_rows("narrativeqa", HUB, source, path, lambda: offline_rows(seed, *OFFLINE_STORIES))
    sizes = resolve_sizes(n_train, n_val, n_test, OFFLINE_STORIES, offline=False)  # None: every question
    return build_task(
        "narrativeqa",
        take_splits(loaded.splits, sizes, seed),
        _convert,
        qa_reward(reward),
        f"Answer a question about a story summary; reward {reward}.",
        loaded.source,
        METRICS,
        MAX_NEW_TOKENS,
        truncation_side="right",  # the question comes before the (long) context: cut the end
    )
