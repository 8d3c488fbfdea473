"""R^3: its factors by hand, and the two reward hacks it guards against (copying the query, very short answers)."""

from __future__ import annotations

import math

import pytest

from lmgym.rewards.catalog import load_metric
from lmgym.rewards.r3 import (
    QueryTypeHead,
    R3Reward,
    interpolate,
    length_incentive,
    repetition_penalty,
    rule_query_type,
)

OPEN_QUERY = "Explain how photosynthesis turns sunlight into chemical energy in plants."
GOOD = (
    "Plants capture sunlight with chlorophyll in their leaves and use that energy to turn water and carbon "
    "dioxide into glucose, storing chemical energy and releasing oxygen as a by-product."
)
SHORT = "Photosynthesis."
CLOSED_QUERY = "What is the capital of France?"
CLOSED_REF = "Paris is the capital of France."


@pytest.fixture(scope="module")
def r3() -> R3Reward:
    return R3Reward()


def test_factors_by_hand() -> None:
    assert length_incentive("one two three", target_words=7) == pytest.approx(math.log(4) / math.log(8))
    assert length_incentive(" ".join(["w"] * 50), target_words=7) == 1.0
    # Trigrams of "a b c a b c": abc, bca, cab, abc -> the second abc repeats: 3 of 4 are new.
    assert repetition_penalty("", "a b c a b c") == pytest.approx(3 / 4)
    # The query's trigrams count as seen: "x y z" copied from the query is not new.
    assert repetition_penalty("x y z", "x y z w") == pytest.approx(1 / 2)
    assert repetition_penalty("q", "two words") == 1.0  # no trigram
    knots = [(0.3, 0.0), (0.9, 1.0)]
    assert [interpolate(x, knots) for x in (0.0, 0.3, 0.6, 0.9, 1.0)] == pytest.approx([0, 0, 0.5, 1, 1])


def test_reward_is_the_product_of_its_factors(r3: R3Reward) -> None:
    row = r3.details([OPEN_QUERY], [GOOD], [[]], [{}])[0]
    assert row["type"] == "open"
    assert row["reward"] == pytest.approx(row["r_x"] * row["li"] * row["rp"])
    assert row["li"] == pytest.approx(math.log(1 + len(GOOD.split())) / math.log(1 + 32))
    assert row["rp"] == 1.0  # no repeated trigram
    assert load_metric("r3")([OPEN_QUERY], [GOOD], [[]], [{}])["r3"].per_sample == pytest.approx([row["reward"]])


def test_copying_the_query_hacks_bare_relevance_but_not_r3(r3: R3Reward) -> None:
    rows = r3.details([OPEN_QUERY, OPEN_QUERY], [GOOD, OPEN_QUERY], [[], []], [{}, {}])
    good, copy = rows
    assert copy["r_x"] > good["r_x"]  # the hack: the query is most "relevant" to itself
    assert copy["rp"] == 0.0  # every trigram of the copy is the query's
    assert good["reward"] > 0.3 > copy["reward"] == 0.0


def test_very_short_answers_hack_bare_relevance_but_not_r3(r3: R3Reward) -> None:
    good, short = r3.details([OPEN_QUERY, OPEN_QUERY], [GOOD, SHORT], [[], []], [{}, {}])
    assert short["r_x"] > 0.8 * good["r_x"]  # one on-topic word is nearly as relevant as a full answer
    assert short["li"] == pytest.approx(math.log(2) / math.log(33))
    assert good["reward"] > 3 * short["reward"]


def test_closed_queries_score_against_the_reference(r3: R3Reward) -> None:
    answers = ["Paris.", "London.", CLOSED_QUERY]
    rows = r3.details([CLOSED_QUERY] * 3, answers, [[CLOSED_REF]] * 3, [{}] * 3)
    paris, london, copy = rows
    assert paris["type"] == "closed"
    assert paris["reward"] == pytest.approx(interpolate(paris["r_y"], [(0.3, 0.0), (0.9, 1.0)]) * paris["rp"])
    assert paris["reward"] > london["reward"]
    assert copy["reward"] == 0.0  # copying the question: no new trigram (and it is not the answer)
    assert paris["li"] < 0.5 and paris["reward"] > paris["r_x"] * paris["li"]  # no length incentive when closed
    # Without a reference, a closed query falls back to the open-ended form.
    no_ref = r3.details([CLOSED_QUERY], ["Paris."], [[]], [{}])[0]
    assert no_ref["reward"] == pytest.approx(no_ref["r_x"] * no_ref["li"] * no_ref["rp"])


def test_query_type_rule_labels_and_head(r3: R3Reward) -> None:
    assert rule_query_type("Who wrote Hamlet?") == "closed"
    assert rule_query_type("How many legs does a spider have?") == "closed"
    assert rule_query_type("Why is the sky blue?") == "open"
    assert rule_query_type("Write a poem about autumn.") == "open"
    assert rule_query_type("What is the best way to learn to cook and why?") == "open"
    # User labels win over the rule.
    assert r3.query_types(["Who wrote Hamlet?"], [{"query_type": "open"}]) == ["open"]
    with pytest.raises(ValueError, match="sample 0: meta\\['query_type'\\] must be"):
        r3.query_types(["Who?"], [{"query_type": "factual"}])
    closed = ["Who wrote Hamlet?", "When did World War II end?", "What is the capital of Japan?", "Where is Peru?"]
    opened = ["Describe your ideal holiday.", "Write a story about a dragon.", "Explain how vaccines work.",
              "Give me ideas for a birthday party."]  # fmt: skip
    head = QueryTypeHead().fit(closed + opened, ["closed"] * 4 + ["open"] * 4)
    assert head(closed + opened) == ["closed"] * 4 + ["open"] * 4
    with pytest.raises(ValueError, match="both 'open' and 'closed'"):
        QueryTypeHead().fit(closed, ["closed"] * 4)
    # A fitted head is a query-type classifier for the reward.
    assert R3Reward(query_type=head).query_types(["Who painted the Mona Lisa?"], [{}]) in (["closed"], ["open"])
