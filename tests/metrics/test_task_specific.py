"""PARENT, intent accuracy and the CommonGen measures, against hand computations."""

from __future__ import annotations

import math

import pytest

from lmgym.metrics.task_specific import parent_scores
from lmgym.rewards.catalog import load_metric

TABLE = [("name", "John"), ("occupation", "doctor"), ("city", "London")]
GEN = "john is a tall doctor in paris"
REF = "john is a doctor"


def test_parent_unigrams_by_hand() -> None:
    # Table tokens {john, doctor, london}. Precision: john, is, a, doctor are in the reference (4); tall, in,
    # paris are neither in it nor in the table (entailment 0): 4/7. Reference recall: the entailed reference
    # words john and doctor are both generated: 1. Table recall: john 1, doctor 1, london 0: 2/3.
    # λ = 1 − (2 of 4 reference words entailed) = 0.5, so R = 1^0.5 · (2/3)^0.5.
    p, r = 4 / 7, math.sqrt(2 / 3)
    result = load_metric("parent", max_order=1)([""], [GEN], [[REF]], [{"table": TABLE}])
    assert result["parent-precision"].per_sample[0] == pytest.approx(p)
    assert result["parent-recall"].per_sample[0] == pytest.approx(r)
    assert result["parent-f1"].per_sample[0] == pytest.approx(2 * p * r / (p + r))


def test_parent_bigrams_by_hand() -> None:
    # Generated bigrams: (john is), (is a) in the reference; (a tall) w=0, (tall doctor) w=1/2, (doctor in) w=1/2,
    # (in paris) w=0: P2 = (2 + 0.5 + 0.5)/6. Reference bigrams weighted by entailment: (john is) 1/2 generated,
    # (is a) 0, (a doctor) 1/2 not generated: E_r2 = 0.5/1.
    tokens = lambda s: s.lower().split()
    table = [([a], [v.lower()]) for a, v in TABLE]
    p, r, f = parent_scores(tokens(GEN), tokens(REF), table, max_order=2)
    p_expected = math.sqrt(4 / 7 * 3 / 6)
    r_expected = math.sqrt(math.sqrt(1 * 0.5) * (2 / 3))
    assert p == pytest.approx(p_expected)
    assert r == pytest.approx(r_expected)
    assert f == pytest.approx(2 * p_expected * r_expected / (p_expected + r_expected))


def test_parent_best_reference_corpus_mean_and_errors() -> None:
    metric = load_metric("parent", max_order=1)
    result = metric(["", ""], [GEN, "john"], [["unrelated words here", REF], ["john"]], [{"table": TABLE}] * 2)
    alone = metric([""], [GEN], [[REF]], [{"table": TABLE}])
    assert result["parent-f1"].per_sample[0] == pytest.approx(alone["parent-f1"].per_sample[0])
    assert result["parent-f1"].corpus == pytest.approx(sum(result["parent-f1"].per_sample) / 2)
    with pytest.raises(KeyError, match=r"sample 0 has no meta\['table'\]"):
        metric([""], [GEN], [[REF]], [{}])


def test_intent_accuracy_from_meta() -> None:
    meta = [{"intent": 1, "predicted_intent": 1}, {"intent": "inform", "predicted_intent": "question"}]
    result = load_metric("intent_accuracy")(["", ""], ["a", "b"], [[], []], meta)["intent_accuracy"]
    assert result.per_sample == [1.0, 0.0]
    assert result.corpus == 0.5
    with pytest.raises(ValueError, match="sample 0 has no meta\\['predicted_intent'\\] and no classifier"):
        load_metric("intent_accuracy")([""], ["a"], [[]], [{"intent": 1}])


def test_intent_accuracy_with_a_classifier(tiny_classifier) -> None:
    from lmgym.models.classifiers import SequenceClassifier

    path = tiny_classifier(["inform", "question", "directive"])
    prompts, gens = ["hi there", "what is it"], [" i am fine", " a cat"]
    predicted = SequenceClassifier(str(path)).predict([p + " " + g for p, g in zip(prompts, gens, strict=True)])
    meta = [{"intent": predicted[0]}, {"intent": "none of them"}]
    result = load_metric("intent_accuracy", classifier=str(path))(prompts, gens, [[], []], meta)
    assert result["intent_accuracy"].per_sample == [1.0, 0.0]


def test_commongen_coverage_and_copy_penalty() -> None:
    concepts = ["dog", "catch", "frisbee"]
    prompt = "generate a sentence with: dog catch frisbee."
    gens = ["The dog catches a frisbee in the park.", "dog catch frisbee", "A dog runs.", "frisbee dog catch"]
    meta = [{"concepts": concepts}] * 4
    coverage = load_metric("commongen_coverage")([prompt] * 4, gens, [[]] * 4, meta)["commongen_coverage"]
    assert coverage.per_sample == pytest.approx([1.0, 1.0, 1 / 3, 1.0])  # "catches" covers "catch" by stem
    penalty = load_metric("commongen_copy_penalty")([prompt] * 4, gens, [[]] * 4, meta)["commongen_copy_penalty"]
    assert penalty.per_sample == [0.0, -1.0, 0.0, -1.0]  # the list verbatim, or nothing but its words
    with pytest.raises(KeyError, match="sample 0 needs meta\\['concepts'\\]"):
        load_metric("commongen_coverage")([prompt], gens[:1], [[]], [{}])
