r"""Offline arithmetic word problems with integer answers: a verifiable-reward task (the GRPO workflow).

Each problem follows one count of objects through ``level`` operations (1, 2 or 3) among +, −, × and
exact ÷ with small numbers: "Ana has 7 apples. She buys 5 more apples. How many apples does Ana have
now?" A × or ÷ step may hand the count to another person ("Tom has 3 times as many apples as Ana"),
and the question then asks about that person. Every intermediate count is a whole number from 1 to
`MAX_VALUE`, and the answer is never one of the numbers the problem states (a model that copies one
would otherwise score on ~4% of one-step and ~12% of two-step problems). Names, objects and phrasings
were written for this task.

The prompt is the problem, a newline and `INSTRUCTION`: "Answer with the final number in \boxed{}."
(The bundled 135M model copies a placeholder such as ``\boxed{N}`` into its answer, and "solve it step
by step" makes it ramble past the token budget; this wording did best for it.) ``references`` is
``(str(answer),)``; ``meta`` is ``{"answer": int, "level": int, "steps": [{"op", "left", "right",
"result"}, ...]}`` with ``op`` one of ``+ - * /``: ``left op right = result``, each result the next
step's ``left``, the last result the answer.

The reward is `math_answer` (1 when the final answer is right; see `lmgym.metrics.math_answer`);
``reward: {parts: [{name: math_answer}, {name: math_format, weight: 0.1}]}`` adds a format bonus.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lmgym.data.sample import Sample
from lmgym.data.task import Task, register_task
from lmgym.data.tasks.common import distinct_draws, metric_reward
from lmgym.errors import InputError, WrongTypeError

INSTRUCTION = r"Answer with the final number in \boxed{}."
LEVELS = (1, 2, 3)
MAX_VALUE = 200  # no count in a problem exceeds this
MAX_NEW_TOKENS = 128  # room for a few lines of working and the box

# fmt: off
# (name, subject pronoun, possessive)
_PEOPLE = (
    ("Ana", "she", "her"), ("Tom", "he", "his"), ("Priya", "she", "her"), ("Kofi", "he", "his"),
    ("Mei", "she", "her"), ("Lucas", "he", "his"), ("Fatima", "she", "her"), ("Diego", "he", "his"),
    ("Hana", "she", "her"), ("Omar", "he", "his"), ("Lena", "she", "her"), ("Ravi", "he", "his"),
    ("Sofia", "she", "her"), ("Jonas", "he", "his"), ("Amara", "she", "her"), ("Kenji", "he", "his"),
    ("Zoe", "she", "her"), ("Mateo", "he", "his"), ("Ines", "she", "her"), ("Sam", "he", "his"),
    ("Yara", "she", "her"), ("Ivan", "he", "his"), ("Nadia", "she", "her"), ("Leo", "he", "his"),
    ("Grace", "she", "her"), ("Tariq", "he", "his"), ("Elif", "she", "her"), ("Ben", "he", "his"),
)
# (plural, container, containers)
_OBJECTS = (
    ("apples", "basket", "baskets"), ("marbles", "jar", "jars"), ("stickers", "sheet", "sheets"),
    ("pencils", "box", "boxes"), ("cookies", "tray", "trays"), ("stamps", "album", "albums"),
    ("books", "shelf", "shelves"), ("seashells", "bucket", "buckets"), ("trading cards", "pack", "packs"),
    ("eggs", "carton", "cartons"), ("beads", "bag", "bags"), ("coins", "purse", "purses"),
    ("flowers", "vase", "vases"), ("toy cars", "box", "boxes"), ("oranges", "crate", "crates"),
    ("crayons", "box", "boxes"), ("muffins", "tray", "trays"), ("balloons", "bunch", "bunches"),
    ("buttons", "jar", "jars"), ("postcards", "envelope", "envelopes"), ("candles", "pack", "packs"),
    ("plums", "bowl", "bowls"),
)
# fmt: on

# Templates. {subj}: the owner as the sentence's subject (a pronoun when unambiguous), {name}: the owner's
# name, {poss}: their possessive, {friend}: another person, {k}: the operand, {a}/{b}: a start's numbers.
_START = (
    "{name} has {a} {objs}.",
    "{name} starts the day with {a} {objs}.",
    "There are {a} {objs} in {name}'s {container}.",
    "{name} owns {a} {objs}.",
    "{name} keeps {a} {objs} on a shelf at home.",
)
_START_TIMES = (  # a start that is itself a × step
    "{name} has {a} {containers} with {b} {objs} in each.",
    "{name} buys {a} {containers} of {objs}, and each {container} holds {b} {objs}.",
    "{name} fills {a} {containers} with {b} {objs} each.",
)


@dataclass(frozen=True)
class _Phrase:
    text: str
    friend: bool = False  # mentions another person, so the next sentence repeats the owner's name
    handover: bool = False  # the count now belongs to the friend


_STEPS: dict[str, tuple[_Phrase, ...]] = {
    "+": (
        _Phrase("{subj} buys {k} more {objs}."),
        _Phrase("Then {subj} finds {k} more."),
        _Phrase("{friend} gives {name} {k} more {objs}.", friend=True),
        _Phrase("Later, {subj} gets another {k} {objs}."),
        _Phrase("{subj} wins {k} more {objs} in a game."),
        _Phrase("{subj} picks up {k} more {objs} on the way home."),
    ),
    "-": (
        _Phrase("{subj} gives {k} {objs} to {friend}.", friend=True),
        _Phrase("Then {subj} sells {k} of them."),
        _Phrase("{subj} loses {k} {objs} on the way home."),
        _Phrase("{subj} uses {k} of {poss} {objs}."),
        _Phrase("{friend} borrows {k} {objs} from {name} and keeps them.", friend=True),
    ),
    "*": (
        _Phrase("{friend} has {k} times as many {objs} as {name}.", friend=True, handover=True),
        _Phrase("{subj} then buys more until {pron} has {k} times as many {objs} as before."),
        _Phrase("{friend} collects {k} times as many {objs} as {name} has now.", friend=True, handover=True),
    ),
    "/": (
        _Phrase("{subj} splits the {objs} into {k} equal groups and keeps one group."),
        _Phrase("{subj} shares the {objs} equally among {k} friends, one of whom is {friend}.", True, True),
        _Phrase("{subj} packs the {objs} equally into {k} {containers} and keeps only one {container}."),
    ),
}
_QUESTIONS = (
    "How many {objs} does {name} have now?",
    "How many {objs} does {name} have in the end?",
    "How many {objs} does {name} end up with?",
    "What is the number of {objs} {name} has now?",
)
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _operand(rng: random.Random, op: str, value: int, cap: int = MAX_VALUE) -> int | None:
    """A right operand for ``value op k`` that keeps the result a whole number in 1..cap; None if none."""
    if op == "+":
        high = min(20, cap - value)
        return rng.randint(2, high) if high >= 2 else None
    if op == "-":
        high = min(25, value - 1)
        return rng.randint(2, high) if high >= 2 else None
    if op == "*":
        high = min(6, cap // value)
        return rng.randint(2, high) if high >= 2 else None
    divisors = [k for k in range(2, 7) if value % k == 0 and value // k >= 2]
    return rng.choice(divisors) if divisors else None


@dataclass
class _Owner:
    name: str
    pron: str
    poss: str
    named_last: bool = True  # whether the previous sentence involved someone else (a pronoun would be ambiguous)

    def subject(self) -> str:
        return self.name if self.named_last else self.pron


def _other(rng: random.Random, owner: str) -> tuple[str, str, str]:
    return rng.choice([p for p in _PEOPLE if p[0] != owner])


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _problem(
    rng: random.Random, level: int, ops: str = "+-*/", cap: int = MAX_VALUE
) -> tuple[str, list[dict[str, int | str]]]:
    """One problem text (without the instruction) with ``level`` operations among ``ops``, every count in
    1..``cap``, and its steps."""
    owner = _Owner(*rng.choice(_PEOPLE))
    objs, container, containers = rng.choice(_OBJECTS)
    slots = {"objs": objs, "container": container, "containers": containers}
    steps: list[dict[str, int | str]] = []
    first = rng.choice(ops)
    if first == "*":  # "3 boxes with 4 in each" is the first step itself
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        sentences = [rng.choice(_START_TIMES).format(name=owner.name, a=a, b=b, **slots)]
        steps.append({"op": "*", "left": a, "right": b, "result": a * b})
    else:  # a start that suits the first operation: a multiple for ÷, room to take away for −
        a = rng.randint(2, 10) * rng.choice((2, 3, 4, 5, 6)) if first == "/" else rng.randint(5, min(30, cap - 2))
        sentences = [rng.choice(_START).format(name=owner.name, a=a, **slots)]
    value = steps[-1]["result"] if steps else a
    owner.named_last = False
    used: set[_Phrase] = set()
    while len(steps) < level:
        choices = [first] if not steps and first != "*" else list(ops)
        rng.shuffle(choices)
        fallback = "+" if "+" in ops else ops[0]
        op, k = next(((o, k) for o in choices if (k := _operand(rng, o, int(value), cap)) is not None), (fallback, 2))
        phrase = rng.choice([p for p in _STEPS[op] if p not in used])  # no sentence pattern twice
        used.add(phrase)
        friend = _other(rng, owner.name)
        text = phrase.text.format(
            subj=owner.subject(), name=owner.name, poss=owner.poss, pron=owner.pron, friend=friend[0], k=k, **slots
        )
        sentences.append(_sentence(text))
        result = _APPLY[op](int(value), k)
        steps.append({"op": op, "left": int(value), "right": k, "result": result})
        value = result
        if phrase.handover:
            owner = _Owner(*friend)
        owner.named_last = phrase.friend
    sentences.append(rng.choice(_QUESTIONS).format(name=owner.name, **slots))
    return " ".join(sentences), steps


def _levels(levels: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(levels, int):
        levels = (levels,)
    if isinstance(levels, str) or not isinstance(levels, Iterable):
        raise WrongTypeError(f"task_args.levels must be a list of levels among {list(LEVELS)}, got {levels!r}")
    out = tuple(levels)
    if not out or any(not isinstance(x, int) or x not in LEVELS for x in out):
        raise InputError(f"task_args.levels must be a non-empty list drawn from {list(LEVELS)}, got {list(out)}")
    return out


def build_problems(
    seed: int, n: int, levels: Iterable[int] = LEVELS, ops: str = "+-*/", max_number: int = MAX_VALUE
) -> list[tuple[str, dict[str, Any]]]:
    """``n`` distinct (prompt, meta) pairs drawn with ``random.Random(seed)``; the i-th has level
    ``levels[i % len(levels)]``, so every slice of the list is balanced across levels, and uses only the
    operations in ``ops``. No answer is one of its problem's own numbers ("9 marbles in 3 equal groups" is
    left out), so copying one never scores."""
    levels = _levels(levels)
    if not ops or any(op not in _APPLY for op in ops) or len(set(ops)) != len(ops):
        raise InputError(f"task_args.ops must be some of the operations '+-*/' (each once), got {ops!r}")
    if not 10 <= max_number <= MAX_VALUE:
        raise InputError(f"task_args.max_number must be in [10, {MAX_VALUE}], got {max_number}")

    def draw(rng: random.Random, kept: int) -> tuple[str, dict[str, Any]] | None:
        level = levels[kept % len(levels)]
        text, steps = _problem(rng, level, ops, max_number)
        if max(max(int(st["left"]), int(st["right"]), int(st["result"])) for st in steps) > max_number:
            return None  # a start of several groups (×) can exceed a small cap
        stated = {steps[0]["left"], *(step["right"] for step in steps)}
        if steps[-1]["result"] in stated:  # copying a number of the problem never scores
            return None
        return f"{text}\n{INSTRUCTION}", {"answer": int(steps[-1]["result"]), "level": level, "steps": steps}

    return distinct_draws(seed, n, draw, "problems")


@register_task("arithmetic", "Arithmetic word problems (1-3 steps) with integer answers; reward: exact final answer.")
def arithmetic_task(
    seed: int = 0,
    levels: int | Sequence[int] = LEVELS,
    n_train: int = 2000,
    n_val: int = 128,
    n_test: int = 256,
    max_new_tokens: int = MAX_NEW_TOKENS,
    ops: str = "+-*/",
    max_number: int = MAX_VALUE,
) -> Task:
    r"""Word problems of ``levels`` (1, 2 and/or 3 operations), balanced across levels in every split, with the
    operations in ``ops`` (``"+-"``: addition and subtraction only) and no number above ``max_number``: the
    last two narrow the difficulty for small models.

    Prompts end with `INSTRUCTION` ("Answer with the final number in \boxed{}."); the reward is
    `math_answer` (1.0 for the right final answer, else 0.0)."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, size in sizes.items():
        if size < 1:
            raise InputError(f"task_args.n_{split} must be >= 1, got {size}")
    if max_new_tokens < 1:
        raise InputError(f"task_args.max_new_tokens must be >= 1, got {max_new_tokens}")
    # One pool of distinct problems cut into consecutive slices, so the splits cannot share a prompt.
    pool = build_problems(seed, sum(sizes.values()), levels, ops, max_number)
    splits: dict[str, list[Sample]] = {}
    start = 0
    for split, size in sizes.items():
        splits[split] = [
            Sample(id=f"arithmetic-{split}-{i:05d}", prompt=prompt, references=(str(meta["answer"]),), meta=meta)
            for i, (prompt, meta) in enumerate(pool[start : start + size])
        ]
        start += size
    return Task(
        name="arithmetic",
        splits=splits,
        reward=metric_reward("math_answer"),
        description="Solve a short arithmetic word problem and give the final number in \\boxed{}; "
        "the reward is 1 for the right answer, else 0.",
        metrics=("reward", "math_answer"),
        generation={"max_new_tokens": max_new_tokens},
    )
