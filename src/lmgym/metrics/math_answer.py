r"""Verifiable math rewards: `math_answer` (is the final answer right?) and `math_format` (is it boxed?).

**Which answer.** The final answer of a generation is, in this order:

1. the content of the last complete ``\boxed{...}`` (braces balanced; an unclosed box, e.g. one cut off
   by ``max_new_tokens``, does not count);
2. else the first number after the last "answer is" / "answer:" / "answer =" on the same line
   ("The final answer is 12.", "**Answer:** 12", "the answer is: Ana has 12 apples");
3. else the last number in the text.

**Numbers.** ``1,200`` is one thousand two hundred (commas only as thousands separators in groups of
three, so ``1,2`` is the two numbers 1 and 2, never the decimal 1.2); ``-4`` and ``−4`` (U+2212) are
negative unless the sign follows a digit, letter or bracket (``7-3=4`` holds 7, 3 and 4); a trailing
period ends a sentence (``12.`` is 12); ``12.0`` equals 12 and ``12.5`` does not. Inside a box,
LaTeX wrappers are dropped (``\text{}``, ``\textbf{}``, ``\mathbf{}``, ``\mathrm{}``, ``\$``, ``$``,
``{,}``, thin spaces ``\,``), as are trailing units or words (``\boxed{12 \text{ apples}}`` is 12); a
box holding an equation counts its right-hand side (``\boxed{7 + 5 = 12}`` is 12). Number words
("twelve") are not read.

**Comparison.** Against ``meta["answer"]`` when the sample has one, else its first reference. When the
reference is an integer, the answer must be a numeral equal to it: an unevaluated expression in the box
(``\boxed{7+5}``, ``\boxed{\frac{24}{2}}``, ``\boxed{3 \times 4}``) scores 0, because math-verify would
call it equal and so pay a model for copying the problem's numbers into the box instead of computing.
A decimal reference against a numeral answer compares exactly as decimals. Any other pair (a LaTeX
reference such as ``\frac{3}{4}``, or a non-numeral answer against a decimal reference) goes to
math-verify's ``verify(parse(reference), parse(answer))``, which decides symbolic equality
(``\frac{3}{4}`` = ``0.75`` = ``3/4``).

**Why not math-verify for everything.** Measured with math-verify 0.9.0: its ``parse`` does find
"the answer is 12" in free text and falls back to the last number, and it reads LaTeX fractions,
``\text{}`` units, ``\$`` and ``1{,}200``; but with several boxes it returns the set of all of them
(``\boxed{3} ... \boxed{12}`` parses as {3, 12}, which matches neither), it misses a Unicode minus
(``−4``), reads ``\boxed{1\,200}`` as 201 and ``1,2`` as 1.2, takes a trailing expression over the
number before it ("she has 12 apples now. Check: 5+7" parses as 5+7), and verifies unevaluated
expressions (``7+5``, ``3 \times 4``, ``\frac{24}{2}``) as equal to their value. So the
extraction and the integer/decimal comparison here are ours, and math-verify decides only what needs a
symbolic comparison. Its timeouts use ``signal.alarm``, which only works in the main thread; elsewhere
it runs without a timeout.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from lmgym.errors import InputError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, register_metric
from lmgym.metrics.text import check_lengths, mean

# A sign counts only where it cannot be a subtraction (not after a digit, letter or closing bracket).
_NUMBER = re.compile(r"(?:(?<![\w)\]}])[-−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer\W{0,3}\s*(?:is|was|:|=)", re.IGNORECASE)
_ANSWER_WINDOW = 80  # characters after "answer is" in which its number must appear (same line)
_BOX_OPEN = re.compile(r"\\boxed\s*\{")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_DROP = re.compile(r"\\[$%,!;: ]|\\left|\\right|\$")
_LEADING_NUMERAL = re.compile(r"\s*(" + _NUMBER.pattern + r")(.*)", re.DOTALL)
_MATH_VERIFY_TIMEOUT_S = 5


def boxed_contents(text: str) -> list[str]:
    r"""The contents of every complete ``\boxed{...}`` in ``text``, in order (nested braces kept)."""
    out = []
    for match in _BOX_OPEN.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                out.append(text[start:i])
                break
    return out


def extract_answer(text: str) -> str | None:
    """The final answer of a generation as written (module docstring: last box, "answer is", last number)."""
    boxes = boxed_contents(text)
    if boxes:
        return boxes[-1].strip()
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        window = text[match.end() : match.end() + _ANSWER_WINDOW].split("\n", 1)[0]
        number = _NUMBER.search(window)
        if number:
            return number.group()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _to_decimal(numeral: str) -> Decimal:
    return Decimal(numeral.replace(",", "").replace("−", "-"))


def numeral_value(answer: str) -> Decimal | None:
    r"""The value of an answer written as a number (LaTeX wrappers, units and an equation's left-hand side
    dropped), or None when it is not one (``7+5``, ``\frac{1}{2}``, ``x``)."""
    text = answer
    for _ in range(3):  # wrappers may nest (\textbf{\text{12}})
        text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _LATEX_DROP.sub("", text.replace("{,}", ","))
    text = text.rsplit("=", 1)[-1]
    match = _LEADING_NUMERAL.fullmatch(text)
    if match is None or any(ch.isdigit() for ch in match.group(2)):  # more numbers after it: an expression
        return None
    return _to_decimal(match.group(1))


def _reference(index: int, refs: Sequence[str], meta: dict[str, Any]) -> str:
    if meta.get("answer") is not None:
        return str(meta["answer"])
    if isinstance(refs, str) or not refs:
        raise InputError(f"math_answer: sample {index} has neither meta['answer'] nor a reference (a list of strings)")
    return str(refs[0])


def _symbolic_equal(reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    timeout = _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${reference}$", parsing_timeout=timeout)  # type: ignore[arg-type]
    guess = parse(f"${answer}$", parsing_timeout=timeout)  # type: ignore[arg-type]
    return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))


def is_correct(answer: str | None, reference: str) -> bool:
    """Whether an extracted answer equals the reference (module docstring: integers exactly, else math-verify)."""
    if answer is None or not answer:
        return False
    ref_value = numeral_value(reference) if _NUMBER.fullmatch(reference.strip()) else None
    value = numeral_value(answer)
    if ref_value is not None and value is not None:
        return value == ref_value
    if ref_value is not None and ref_value == ref_value.to_integral_value():
        return False  # an integer must be written as a numeral
    return _symbolic_equal(reference, answer)


@register_metric("math_answer", "1 if the final answer (last \\boxed{}, 'answer is', last number) equals the reference")
class MathAnswer(Metric):
    r"""Accuracy of the final answer against ``meta["answer"]`` (else the first reference), 1.0 or 0.0 per
    sample; see the module docstring for how the answer is found and compared."""

    name = "math_answer"

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        check_lengths(self.name, generations, references, meta)
        per_sample = [
            1.0 if is_correct(extract_answer(gen), _reference(i, refs, m)) else 0.0
            for i, (gen, refs, m) in enumerate(zip(generations, references, meta, strict=True))
        ]
        return {self.name: MetricValue(per_sample, mean(per_sample))}


@register_metric("math_format", "1 if the generation gives exactly one \\boxed{} answer (a number by default)")
class MathFormat(Metric):
    r"""1.0 when the generation holds exactly one complete ``\boxed{...}`` whose content is a number
    (``numeric=False``: anything non-empty), else 0.0. Meant as a small extra term next to
    `math_answer` (``reward: {parts: [{name: math_answer}, {name: math_format, weight: 0.1}]}``)."""

    name = "math_format"

    def __init__(self, numeric: bool = True) -> None:
        self.numeric = numeric

    def _ok(self, text: str) -> bool:
        boxes = boxed_contents(text)
        if len(boxes) != 1 or not boxes[0].strip():
            return False
        return not self.numeric or numeral_value(boxes[0]) is not None

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        check_lengths(self.name, generations, prompts, meta)
        per_sample = [1.0 if self._ok(gen) else 0.0 for gen in generations]
        return {self.name: MetricValue(per_sample, mean(per_sample))}
