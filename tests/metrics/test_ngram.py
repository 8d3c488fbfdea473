"""N-gram metrics against hand computations and the values their packages document."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lmgym.metrics.ngram import coco_tokens
from lmgym.rewards.catalog import load_metric
from lmgym.rewards.metric import MetricReward

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


# Captions already lower-cased and without punctuation (COCO's tokenizer leaves them as they are), of different
# lengths (the length penalty matters) and with one to four references each.
CIDER_GENS = [
    "a man is riding a horse on the beach",
    "two dogs play with a red ball in the park",
    "a plate of food with broccoli and rice",
    "a woman holding an umbrella in the rain",
    "a cat sleeping",
]
CIDER_REFS = [
    ["a man rides a horse along the beach", "a person riding a brown horse on a sandy beach", "horse and rider"],
    ["two dogs are playing with a red ball in the park", "dogs play in a park", "two puppies chase a ball",
     "a dog with a ball"],
    ["a plate of broccoli rice and beef", "a dinner plate with rice and vegetables"],
    ["a woman holding an umbrella walks in the rain"],
    ["a cat is sleeping on a red couch", "a grey cat asleep on the sofa"],
]  # fmt: skip


def pycoco_cider(gens: list[str], refs: list[list[str]], **options) -> tuple[float, list[float]]:
    """pycocoevalcap's own CIDEr-D (IDF over these references, ×10) on text already tokenized by spaces."""
    from pycocoevalcap.cider.cider import Cider

    corpus, per_sample = Cider(**options).compute_score(dict(enumerate(refs)), {i: [g] for i, g in enumerate(gens)})
    return float(corpus), [float(x) for x in per_sample]


def test_cider_d_matches_pycocoevalcap_on_tokenized_captions() -> None:
    corpus, per_sample = pycoco_cider(CIDER_GENS, CIDER_REFS)
    assert min(per_sample) > 0 and len({round(x, 6) for x in per_sample}) == len(per_sample)  # nothing degenerate
    result = run("cider", CIDER_GENS, CIDER_REFS)["cider"]
    # The same scale as pycocoevalcap (which multiplies by 10 itself): no rescaling in lmgym.
    assert result.per_sample == pytest.approx(per_sample, rel=1e-9)
    assert result.corpus == pytest.approx(corpus, rel=1e-9)
    assert result.corpus == pytest.approx(sum(per_sample) / len(per_sample), rel=1e-9)
    # A different batch has different document frequencies, so different per-sample scores.
    sub_corpus, sub_per_sample = pycoco_cider(CIDER_GENS[:3], CIDER_REFS[:3])
    assert sub_per_sample[2] != pytest.approx(per_sample[2], rel=1e-2)  # 2.18 vs 2.21
    sub = run("cider", CIDER_GENS[:3], CIDER_REFS[:3])["cider"]
    assert sub.per_sample == pytest.approx(sub_per_sample, rel=1e-9)
    assert sub.corpus == pytest.approx(sub_corpus, rel=1e-9)


def cider_d_by_definition(gens: list[str], refs: list[list[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D written out (Vedantam et al., 2015, as COCO computes it) on space-tokenized text: per order k,
    the cosine of TF-IDF k-gram vectors with the generation's weights clipped at the reference's, IDF
    log(samples) − log(samples whose references hold the k-gram), times exp(−Δlength²/(2σ²)); averaged over
    k = 1..n and over the references, ×10."""

    def counts(tokens: list[str], k: int) -> Counter:
        return Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))

    gen_tokens, ref_tokens = [g.split() for g in gens], [[r.split() for r in rs] for rs in refs]
    df: Counter = Counter()
    for rs in ref_tokens:
        df.update({gram for r in rs for k in range(1, n + 1) for gram in counts(r, k)})

    def tfidf(tokens: list[str], k: int) -> dict[tuple[str, ...], float]:
        return {g: c * (math.log(len(gens)) - math.log(max(1, df[g]))) for g, c in counts(tokens, k).items()}

    scores = []
    for g, rs in zip(gen_tokens, ref_tokens, strict=True):
        total = 0.0
        for r in rs:
            penalty = math.exp(-((len(g) - len(r)) ** 2) / (2 * sigma**2))
            for k in range(1, n + 1):
                vg, vr = tfidf(g, k), tfidf(r, k)
                norm_g, norm_r = math.hypot(*vg.values()), math.hypot(*vr.values())
                if norm_g and norm_r:
                    clipped = sum(min(v, vr.get(x, 0.0)) * vr.get(x, 0.0) for x, v in vg.items())
                    total += clipped / (norm_g * norm_r) * penalty / n
        scores.append(10 * total / len(rs))
    return scores


@pytest.mark.parametrize(("n", "sigma"), [(4, 6.0), (2, 2.0), (3, 6.0), (5, 1.5)])
def test_cider_d_by_definition_for_every_n_and_sigma(n: int, sigma: float) -> None:
    expected = cider_d_by_definition(CIDER_GENS, CIDER_REFS, n, sigma)
    if (n, sigma) == (4, 6.0):  # the written-out definition is pycocoevalcap's
        assert expected == pytest.approx(pycoco_cider(CIDER_GENS, CIDER_REFS)[1], rel=1e-9)
    else:  # the options change the scores
        assert expected != pytest.approx(cider_d_by_definition(CIDER_GENS, CIDER_REFS), rel=1e-3)
    result = run("cider", CIDER_GENS, CIDER_REFS, n=n, sigma=sigma)["cider"]
    assert result.per_sample == pytest.approx(expected, rel=1e-9)
    assert result.corpus == pytest.approx(sum(expected) / len(expected), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        load_metric("cider", n=1)


# Raw captions with capitals, punctuation, clitics and brackets, and their tokens as COCO's evaluation gives them
# (Stanford's PTBTokenizer with -lowerCase, then its punctuation list removed; output of pycocoevalcap 1.2).
RAW_GENS = [
    "A man riding a horse on the beach.",
    "Two dogs play with a ball (red) in the park!",
    "It's a plate of food: broccoli, rice and beef.",
    "A woman -- holding an umbrella -- walks in the rain?",
]
RAW_REFS = [
    ["A man rides a horse along the beach.", "A person riding a brown horse on a sandy beach."],
    ["Two dogs are playing with a red ball in the park.", "Dogs play in a park.", "Two puppies chase a ball."],
    ["A plate of broccoli, rice and beef.", "It's a dinner plate with rice and vegetables."],
    ["A woman holding an umbrella walks in the rain.", "A lady with an umbrella doesn't mind the rain."],
]
COCO_GENS = [
    "a man riding a horse on the beach",
    "two dogs play with a ball -lrb- red -rrb- in the park",
    "it 's a plate of food broccoli rice and beef",
    "a woman holding an umbrella walks in the rain",
]
COCO_REFS = [
    ["a man rides a horse along the beach", "a person riding a brown horse on a sandy beach"],
    ["two dogs are playing with a red ball in the park", "dogs play in a park", "two puppies chase a ball"],
    ["a plate of broccoli rice and beef", "it 's a dinner plate with rice and vegetables"],
    ["a woman holding an umbrella walks in the rain", "a lady with an umbrella does n't mind the rain"],
]


def test_cider_d_tokenizes_like_the_coco_evaluation() -> None:
    assert [" ".join(coco_tokens(g)) for g in RAW_GENS] == COCO_GENS
    assert [[" ".join(coco_tokens(r)) for r in refs] for refs in RAW_REFS] == COCO_REFS
    # Abbreviations and numbers stay whole; every sentence's final period goes, as with PTB.
    assert coco_tokens("Mr. Smith paid $5.50 in the U.S. and left. Then he slept.") == [
        "mr.", "smith", "paid", "$", "5.50", "in", "the", "u.s.", "and", "left", "then", "he", "slept"
    ]  # fmt: skip
    corpus, per_sample = pycoco_cider(COCO_GENS, COCO_REFS)
    result = run("cider", RAW_GENS, RAW_REFS)["cider"]
    assert result.per_sample == pytest.approx(per_sample, rel=1e-9)
    assert result.corpus == pytest.approx(corpus, rel=1e-9)


def coco_java_tokenizer_usable() -> bool:
    """COCO's PTB tokenizer runs Java on a file it writes next to its jar, in the installed package."""
    spec = importlib.util.find_spec("pycocoevalcap.tokenizer.ptbtokenizer")
    return bool(shutil.which("java") and spec and spec.origin and os.access(Path(spec.origin).parent, os.W_OK))


@pytest.mark.skipif(not coco_java_tokenizer_usable(), reason="COCO's PTB tokenizer needs Java and a writable package")
def test_cider_d_matches_the_coco_pipeline_with_its_java_tokenizer() -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({i: [{"caption": g}] for i, g in enumerate(RAW_GENS)})
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(RAW_REFS)})
    assert [res[i][0] for i in range(len(RAW_GENS))] == COCO_GENS  # the hand-kept tokens above are COCO's
    corpus, per_sample = Cider().compute_score(gts, res)
    result = run("cider", RAW_GENS, RAW_REFS)["cider"]
    assert result.per_sample == pytest.approx([float(x) for x in per_sample], rel=1e-9)
    assert result.corpus == pytest.approx(float(corpus), rel=1e-9)


def test_metrics_as_rewards_and_input_errors() -> None:
    reward = MetricReward(load_metric("rouge"), key="rouge-2")
    assert reward(["", ""], ["a b c", "x y"], [["a b c"], ["z"]], [{}, {}]) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="sample 1 has no reference"):
        run("sacrebleu", ["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="list of strings"):
        run("bleu", ["a"], ["a"])
    with pytest.raises(KeyError, match="did you mean 'rouge'"):
        load_metric("rogue")
