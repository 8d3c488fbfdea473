"""N-gram metrics against hand computations and the values their packages document."""

from __future__ import annotations

import math

import pytest

from lmgym.metrics.base import MetricReward, load_metric

# SacreBLEU's README example: three system sentences, two reference streams.
SACRE_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SACRE_REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
PER_SAMPLE_REFS = [list(r) for r in zip(*SACRE_REFS, strict=True)]


def run(name: str, generations, references, **options):
    n = len(generations)
    return load_metric(name, **options)([""] * n, generations, references, [{}] * n)


def test_sacrebleu_matches_its_documented_corpus_scores() -> None:
    assert run("sacrebleu", SACRE_SYS, PER_SAMPLE_REFS)["sacrebleu"].corpus == pytest.approx(0.4853, abs=5e-5)
    assert run("chrf", SACRE_SYS, PER_SAMPLE_REFS)["chrf"].corpus == pytest.approx(0.5973, abs=5e-5)


def test_ter_by_hand() -> None:
    # One substitution in four words; a second sample identical to its reference.
    result = run("ter", ["a b c d", "x y"], [["a b z d"], ["x y"]])["ter"]
    assert result.per_sample == pytest.approx([0.25, 0.0])
    assert result.corpus == pytest.approx(1 / 6)  # corpus TER: total edits / total reference words


def test_bleu_by_hand() -> None:
    # hyp "the cat the cat" vs ref "the cat sat": p1 = 2/4 (clipped), p2 = 1/3, no brevity penalty (4 > 3).
    result = run("bleu", ["the cat the cat"], [["the cat sat"]], max_order=2, smoothing="none")["bleu"]
    assert result.per_sample[0] == pytest.approx(math.sqrt(0.5 * 1 / 3))
    assert result.corpus == pytest.approx(result.per_sample[0])  # a one-sample corpus scores as its sentence
    # Brevity penalty: hyp "the cat" (2) against ref "the cat sat" (3): exp(1 − 3/2), both precisions 1.
    short = run("bleu", ["the cat"], [["the cat sat"]], max_order=2, smoothing="none")["bleu"]
    assert short.corpus == pytest.approx(math.exp(1 - 3 / 2))


def test_bleu_corpus_is_not_the_mean_of_sentences() -> None:
    gens, refs = ["the cat sat on the mat", "a dog"], [["the cat sat on the mat"], ["a dog barked loudly"]]
    result = run("bleu", gens, refs)["bleu"]
    assert result.per_sample[0] == pytest.approx(1.0)
    assert result.corpus != pytest.approx(sum(result.per_sample) / 2)


def test_rouge_by_hand() -> None:
    result = run("rouge", ["the cat on the mat"], [["the cat sat on the mat"]])
    # unigrams: 5 of 5 generated words match, 5 of 6 reference words found: F = 2·1·(5/6)/(1 + 5/6) = 10/11
    assert result["rouge-1"].per_sample[0] == pytest.approx(10 / 11)
    # bigrams: 3 shared of 4 generated and 5 reference ones
    assert result["rouge-2"].per_sample[0] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert result["rouge-L"].per_sample[0] == pytest.approx(10 / 11)  # LCS "the cat on the mat"
    assert set(result) == {"rouge-1", "rouge-2", "rouge-L", "rouge-Lsum"}


def test_rouge_takes_the_best_reference_and_rouge_l_max_agrees() -> None:
    gens = ["the cat on the mat", "dogs bark at night"]
    refs = [["completely different words", "the cat sat on the mat"], ["dogs bark at night"]]
    rouge = run("rouge", gens, refs)
    assert rouge["rouge-L"].per_sample == pytest.approx([10 / 11, 1.0])
    assert rouge["rouge-L"].corpus == pytest.approx((10 / 11 + 1.0) / 2)
    assert run("rouge_l_max", gens, refs)["rouge_l_max"].per_sample == pytest.approx(rouge["rouge-L"].per_sample)


def test_meteor_documented_value_and_hand_values() -> None:
    # NLTK's doctest: 0.6944 for this hypothesis against three references.
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party"
    refs = [
        "It is a guide to action that ensures that the military will forever heed Party commands",
        "It is the guiding principle which guarantees the military forces always being under the command of the Party",
        "It is the practical guide for the army always to heed the directions of the party",
    ]
    assert run("meteor", [hyp], [refs])["meteor"].per_sample[0] == pytest.approx(0.6944, abs=5e-5)
    # Identical 6-word sentence: F = 1, one chunk, penalty 0.5·(1/6)³.
    same = run("meteor", ["the cat sat on the mat"], [["the cat sat on the mat"]])["meteor"].per_sample[0]
    assert same == pytest.approx(1 - 0.5 / 6**3)
    # "car" and "auto" match only as WordNet synonyms (car.n.01); then all 3 words align in one chunk.
    # (Pairs that Porter stemming changes, like large → larg, miss: NLTK looks synonyms up after stemming.)
    synonym = run("meteor", ["the red car"], [["the red auto"]])["meteor"].per_sample[0]
    assert synonym == pytest.approx(1 - 0.5 / 3**3)


def test_cider_d_by_hand() -> None:
    # Two samples whose references share no n-gram: every n-gram has IDF log 2. Sample 0 repeats its
    # reference (cosine 1 for n = 1..4, no length penalty): 10 × mean(1, 1, 1, 1) = 10. Sample 1 shares nothing.
    gens = ["the cat sat on the mat", "purple elephants dance"]
    refs = [["the cat sat on the mat"], ["a dog barked all night long"]]
    result = run("cider", gens, refs)["cider"]
    assert result.per_sample == pytest.approx([10.0, 0.0])
    assert result.corpus == pytest.approx(5.0)
    # The documented caveat: alone, every n-gram's IDF is log(1) − log(1) = 0.
    assert run("cider", gens[:1], refs[:1])["cider"].per_sample == pytest.approx([0.0])


def test_metrics_as_rewards_and_input_errors() -> None:
    reward = MetricReward(load_metric("rouge"), key="rouge-2")
    assert reward(["", ""], ["a b c", "x y"], [["a b c"], ["z"]], [{}, {}]) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="sample 1 has no reference"):
        run("sacrebleu", ["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="list of strings"):
        run("bleu", ["a"], ["a"])
    with pytest.raises(KeyError, match="did you mean 'rouge'"):
        load_metric("rogue")
