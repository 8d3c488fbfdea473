"""math_answer and math_format: answer extraction, exact comparison, the reward interface, composition."""

from __future__ import annotations

from decimal import Decimal

import pytest

from lmgym.config import RewardConfig
from lmgym.errors import InputError
from lmgym.metrics.math_answer import extract_answer, is_correct, numeral_value
from lmgym.rewards.catalog import availability, load_metric, metric_infos
from lmgym.rewards.factory import build_reward, named_reward
from lmgym.rewards.metric import MetricReward

# (generation, the answer as written)
EXTRACTION = [
    (r"7 + 5 = 12, so Ana has \boxed{12} apples.", "12"),
    (r"First \boxed{3}, then on reflection \boxed{12}.", "12"),  # several boxes: the last
    (r"\boxed{\frac{3}{4}} and \boxed{x^{2}}", "x^{2}"),  # nested braces kept
    (r"It is \boxed{12 and then it stops", "12"),  # an unclosed box does not count; last number
    ("Ana buys 5, gives 3 away, so the answer is 7.", "7"),
    ("The answer is 5. Wait, no: the answer is 12. Check: 3 + 9.", "12"),  # last 'answer is'
    ("**Answer:** 12", "12"),
    ("The final answer is: Ana has 12 apples.", "12"),
    ("answer = 40 after 3 steps of 2", "40"),
    ("She had 5 apples and got 7 more, so now she has 12.", "12"),  # last number
    ("First 18 - 6 = 12, then 12 / 3 = 4", "4"),  # distractors before the final one
    ("I am not sure how to do this.", None),
    ("The answer is 1,200.", "1,200"),  # thousands separator, trailing period
    ("She owes -4 dollars, so the answer is −4", "−4"),  # negative, Unicode minus
    ("7-3=4", "4"),  # a minus after a digit is a subtraction
    ("The answer is 12.0", "12.0"),
    ("1,2", "2"),  # not a thousands group: two numbers
    ("The answer is twelve, I counted 3 times", "3"),  # number words are not read
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("12", "12"),
        ("1,200", "1200"),
        ("-4", "-4"),
        ("−4", "-4"),
        ("12.0", "12"),
        ("12.", "12"),
        (r"12\text{ apples}", "12"),
        (r"\$1{,}200", "1200"),
        (r"1\,200", "1200"),
        ("7 + 5 = 12", "12"),
        (r"\textbf{\text{12}}", "12"),
        ("7+5", None),
        (r"\frac{24}{2}", None),
        (r"3 \times 4", None),
        ("N", None),
        ("", None),
    ],
)
def test_numeral_value(written: str, value: str | None) -> None:
    assert numeral_value(written) == (None if value is None else Decimal(value))


@pytest.mark.parametrize(
    ("generation", "reference", "correct"),
    [
        (r"\boxed{12}", "12", True),
        (r"\boxed{13}", "12", False),
        (r"\boxed{12.0}", "12", True),
        (r"\boxed{12.5}", "12", False),
        (r"\boxed{1,200}", "1200", True),
        ("The answer is 1200", "1,200", True),
        (r"\boxed{-4}", "-4", True),
        (r"\boxed{4}", "-4", False),
        (r"\boxed{7+5}", "12", False),  # unevaluated work does not count for an integer answer
        (r"\boxed{\frac{24}{2}}", "12", False),
        (r"\boxed{N}", "12", False),  # a placeholder copied from the instruction
        (r"\boxed{12} ... actually \boxed{13}", "12", False),
        ("no number here", "12", False),
        ("The answer is 0.75", "0.75", True),
        # Non-integer references go to math-verify's symbolic comparison.
        (r"\boxed{\frac{3}{4}}", "0.75", True),
        (r"\boxed{0.75}", r"\frac{3}{4}", True),
        (r"\boxed{3/4}", r"\frac{3}{4}", True),
        (r"\boxed{0.5}", r"\frac{3}{4}", False),
    ],
)
def test_is_correct(generation: str, reference: str, correct: bool) -> None:
    assert is_correct(extract_answer(generation), reference) is correct


def test_math_answer_as_a_reward_through_the_reward_interface() -> None:
    generations = [r"5 + 7 = 12. \boxed{12}", "So she has 11 apples.", "The answer is 30.", r"\boxed{3}"]
    references = [["12"], ["12"], ["999"], []]
    meta = [{"answer": 12}, {}, {"answer": 30}, {"answer": 3}]  # meta['answer'] wins over the reference
    prompts = ["p"] * 4
    for reward in (named_reward("math_answer"), MetricReward(load_metric("math_answer"))):
        assert reward(prompts, generations, references, meta) == [1.0, 0.0, 1.0, 1.0]
    result = load_metric("math_answer")(prompts, generations, references, meta)
    assert result["math_answer"].corpus == pytest.approx(0.75)
    with pytest.raises(InputError, match="sample 0 has neither"):
        named_reward("math_answer")(["p"], [r"\boxed{1}"], [[]], [{}])


@pytest.mark.parametrize(
    ("generation", "score"),
    [
        (r"7 + 5 = 12, so \boxed{12}.", 1.0),
        (r"\boxed{12 \text{ apples}}", 1.0),
        (r"\boxed{3} then \boxed{12}", 0.0),  # exactly one box
        ("The answer is 12.", 0.0),
        (r"\boxed{}", 0.0),
        (r"\boxed{N}", 0.0),
        (r"\boxed{12", 0.0),
    ],
)
def test_math_format(generation: str, score: float) -> None:
    assert named_reward("math_format")(["p"], [generation], [["12"]], [{}]) == [score]


def test_math_format_non_numeric_option() -> None:
    reward = named_reward("math_format", args={"numeric": False})
    assert reward(["p", "p"], [r"\boxed{\frac{1}{2}}", r"\boxed{ }"], [[], []], [{}, {}]) == [1.0, 0.0]


def test_answer_and_format_combine_in_a_config() -> None:
    config = RewardConfig.model_validate({"parts": [{"name": "math_answer"}, {"name": "math_format", "weight": 0.1}]})
    reward = build_reward(config, default=None)
    generations = [r"\boxed{12}", "the answer is 12", r"\boxed{11}", "nothing"]
    scores = reward(["p"] * 4, generations, [["12"]] * 4, [{"answer": 12}] * 4)
    assert scores == pytest.approx([1.1, 1.0, 0.1, 0.0])


def test_registered_per_sample_and_available() -> None:
    infos = metric_infos()
    for name in ("math_answer", "math_format"):
        assert infos[name].per_sample
        assert availability(infos[name]) == (True, "")
