"""BERTScore, MAUVE, BLEURT, SPICE and SummaC on local models, against hand computations."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from lmgym.metrics.base import MissingRequirement
from lmgym.metrics.model_based import MINILM_BASELINE
from lmgym.metrics.summac import summac_zs_score
from lmgym.metrics.text import sentences
from lmgym.models.encoder import bundled_encoder_path
from lmgym.rewards.catalog import load_metric


@pytest.fixture(scope="module")
def bertscore_raw():
    return load_metric("bertscore", rescale_with_baseline=False)


def test_bertscore_identical_unrelated_and_multi_reference(bertscore_raw) -> None:
    gens = ["the cat sat on the mat", "the cat sat on the mat"]
    refs = [["the cat sat on the mat"], ["stock prices fell sharply on monday", "a cat was sitting on a mat"]]
    result = bertscore_raw(["", ""], gens, refs, [{}, {}])
    assert result["bertscore-f1"].per_sample[0] == pytest.approx(1.0, abs=1e-5)
    # The second sample keeps its best reference: the paraphrase, not the unrelated sentence.
    paraphrase = bertscore_raw([""], gens[:1], [[refs[1][1]]], [{}])["bertscore-f1"].per_sample[0]
    unrelated = bertscore_raw([""], gens[:1], [[refs[1][0]]], [{}])["bertscore-f1"].per_sample[0]
    assert result["bertscore-f1"].per_sample[1] == pytest.approx(paraphrase, abs=1e-6)
    assert paraphrase > unrelated
    assert result["bertscore-f1"].corpus == pytest.approx(sum(result["bertscore-f1"].per_sample) / 2)


def test_bertscore_rescaling_uses_the_shipped_minilm_baseline(bertscore_raw) -> None:
    with MINILM_BASELINE.open() as f:
        rows = {int(r["LAYER"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == list(range(7))  # embeddings + 6 layers
    b = float(rows[6]["F"])
    assert 0.0 < b < 1.0
    args = ([""], ["a dog runs in the park"], [["children play football outside"]], [{}])
    raw = bertscore_raw(*args)["bertscore-f1"].per_sample[0]
    rescaled = load_metric("bertscore")(*args)["bertscore-f1"].per_sample[0]
    assert rescaled == pytest.approx((raw - b) / (1 - b), abs=1e-5)
    # Another layer is another score.
    layer3 = load_metric("bertscore", num_layers=3, rescale_with_baseline=False)(*args)["bertscore-f1"]
    assert layer3.per_sample[0] != pytest.approx(raw, abs=1e-4)
    # IDF weights come from the references scored together (so a batch needs more than one reference).
    two = (["", ""], ["a dog runs in the park", "the cat"], [["children play football outside"], ["a cat"]], [{}, {}])
    weighted = load_metric("bertscore", idf=True, rescale_with_baseline=False)(*two)["bertscore-f1"]
    plain = bertscore_raw(*two)["bertscore-f1"]
    assert 0 < weighted.per_sample[0] != pytest.approx(plain.per_sample[0], abs=1e-4)


def test_bertscore_scores_an_empty_generation_zero_and_the_rest_as_alone(bertscore_raw) -> None:
    # An empty generation (a model that stops at once) gets bert-score's raw 0; the others are unaffected.
    refs = [["A man was rescued from the mountain."], ["The cat sat on the warm mat."]]
    both = bertscore_raw(["", ""], ["  ", "A cat sat on a mat."], refs, [{}, {}])["bertscore-f1"].per_sample
    alone = bertscore_raw([""], ["A cat sat on a mat."], refs[1:], [{}])["bertscore-f1"].per_sample
    assert both[0] == 0.0
    assert both[1] == pytest.approx(alone[0], abs=1e-6) and alone[0] > 0.5
    rescaled = load_metric("bertscore")([""], [""], refs[:1], [{}])["bertscore-f1"].per_sample[0]
    assert rescaled < 0  # (0 − baseline) / (1 − baseline)


def test_mauve_from_bundled_encoder_features() -> None:
    import mauve as mauve_package

    from lmgym.models.encoder import load_encoder

    # Two halves of one distribution (alternate sentences of one template) and an unrelated one.
    pool = [
        f"the {a} cat sat on the {b} mat"
        for a in ("black", "white", "grey", "small", "big")
        for b in ("red", "blue", "old", "new", "soft", "warm", "green", "long")
    ]
    cats, cats2 = pool[0::2], pool[1::2]
    stocks = [
        f"shares of {a} rose {b} percent on friday"
        for a in ("apple", "tesla", "ibm", "intel")
        for b in ("two", "five", "nine", "ten", "six")
    ]
    metric = load_metric("mauve", kmeans_num_redo=1)
    close = metric([""] * 20, cats, [[t] for t in cats2], [{}] * 20)["mauve"]
    far = metric([""] * 20, cats, [[t] for t in stocks], [{}] * 20)["mauve"]
    assert close.per_sample is None  # corpus-level only
    assert close.corpus > 0.5 > far.corpus
    # The same number as mauve-text computes from the bundled encoder's features of generations and references.
    encoder = load_encoder(None, pooling="mean", normalize=False)
    direct = mauve_package.compute_mauve(
        p_features=encoder.embed(cats).numpy(), q_features=encoder.embed(stocks).numpy(), kmeans_num_redo=1
    )
    assert far.corpus == pytest.approx(direct.mauve)


def save_tiny_bert(folder: Path, num_labels: int, id2label: dict[int, str] | None = None) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, num_labels=num_labels,
        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}),
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_bleurt_runs_a_supplied_checkpoint_and_says_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LMGYM_BLEURT_CHECKPOINT", raising=False)
    with pytest.raises(MissingRequirement, match="BLEURT needs a checkpoint: pass checkpoint="):
        load_metric("bleurt")([""], ["a"], [["a"]], [{}])
    folder = save_tiny_bert(tmp_path / "bleurt", num_labels=1)
    gens, refs = ["the cat sat", "a dog"], [["the cat sat down", "a cat"], ["a dog barked"]]
    result = load_metric("bleurt", checkpoint=str(folder))(["", ""], gens, refs, [{}, {}])["bleurt"]
    model, tok = AutoModelForSequenceClassification.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        direct = [
            [float(model(**tok(r, g, return_tensors="pt")).logits[0, 0]) for r in rs]
            for g, rs in zip(gens, refs, strict=True)
        ]
    assert result.per_sample == pytest.approx([max(d) for d in direct], abs=1e-5)  # best reference, unpadded
    with pytest.raises(ValueError, match="has 3 outputs; BLEURT has one"):
        three = save_tiny_bert(tmp_path / "three", num_labels=3)
        load_metric("bleurt", checkpoint=str(three))([""], ["a"], [["a"]], [{}])


def test_spice_names_what_it_needs(monkeypatch) -> None:
    import shutil

    monkeypatch.delenv("LMGYM_CORENLP_DIR", raising=False)
    metric = load_metric("spice")
    if metric.missing() is None:
        pytest.skip("this machine has SPICE's CoreNLP jars installed")
    needed = "Java" if shutil.which("java") is None else "stanford-corenlp-3.6.0.jar"
    with pytest.raises(MissingRequirement, match=needed):
        metric([""], ["a"], [["a"]], [{}])
    if shutil.which("java") is not None:
        assert "lacks stanford-corenlp-3.6.0.jar" in load_metric("spice", corenlp_dir="/nonexistent").missing()


def test_summac_zs_aggregation_by_hand() -> None:
    # Scores P(e) − P(c) looked up per (premise, hypothesis): max over source sentences, mean over summary ones.
    table = {
        ("S1.", "A."): (0.9, 0.05),
        ("S2.", "A."): (0.2, 0.1),
        ("S1.", "B."): (0.1, 0.8),
        ("S2.", "B."): (0.3, 0.6),
    }

    def nli(premises, hypotheses):
        pairs = [table[(p, h)] for p, h in zip(premises, hypotheses, strict=True)]
        return [e for e, _ in pairs], [c for _, c in pairs]

    score, matrix = summac_zs_score(["S1.", "S2."], ["A.", "B."], nli)
    assert [v for row in matrix for v in row] == pytest.approx([0.85, -0.7, 0.1, -0.3])
    assert score == pytest.approx((0.85 + -0.3) / 2)
    metric = load_metric("summac", nli_model=nli)
    result = metric(["S1. S2."], ["A. B."], [[]], [{}])["summac"]
    assert result.per_sample == pytest.approx([0.275])


def test_summac_with_a_tiny_nli_model_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LMGYM_NLI_MODEL", raising=False)
    with pytest.raises(MissingRequirement, match="SummaC needs an NLI model: pass nli_model="):
        load_metric("summac")([""], ["a"], [[]], [{}])
    folder = save_tiny_bert(tmp_path / "nli", 3, {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"})
    source = "The cat sat on the mat. It was a sunny day. Dogs barked outside."
    summary = "A cat sat. The day was sunny."
    doc = {"document": source}
    result = load_metric("summac", nli_model=str(folder), source="meta:document")([""], [summary], [[]], [doc])
    model, tok = AutoModelForSequenceClassification.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        best = []
        for hyp in sentences(summary):
            scores = []
            for premise in sentences(source):
                probs = torch.softmax(model(**tok(premise, hyp, return_tensors="pt")).logits[0], -1)
                scores.append(float(probs[0] - probs[2]))
            best.append(max(scores))
    assert result["summac"].per_sample[0] == pytest.approx(sum(best) / len(best), abs=1e-5)
    with pytest.raises(ValueError, match="cannot tell which label"):
        unnamed = save_tiny_bert(tmp_path / "unnamed", 3)
        load_metric("summac", nli_model=str(unnamed))([""], ["a."], [[]], [{}])
