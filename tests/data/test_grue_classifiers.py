"""The classifiers trained on offline GRUE data: accurate on held-out offline text, cached on disk, and
usable as rewards."""

from __future__ import annotations

import pytest
import torch

from lmgym.data.registry import load_task
from lmgym.data.tasks.dailydialog import intent_classifier
from lmgym.data.tasks.imdb import sentiment_classifier
from lmgym.models.classifiers import EmbeddingClassifier, cached_classifier
from lmgym.rewards.classifier import ClassifierReward


def test_intent_classifier_is_accurate_on_held_out_turns():
    classifier = intent_classifier()
    test = load_task("dailydialog", source="offline", seed=7).split("test")
    predicted = classifier.predict([s.references[0] for s in test])
    accuracy = sum(p == s.meta["intent"] for p, s in zip(predicted, test, strict=True)) / len(test)
    assert accuracy >= 0.85


def test_sentiment_classifier_is_accurate_on_held_out_reviews():
    from lmgym.data.tasks.imdb import offline_rows

    rows = offline_rows(seed=99, n_train=0, n_test=60)["test"]
    predicted = sentiment_classifier().predict([r["text"] for r in rows])
    accuracy = sum(p == ("positive" if r["label"] else "negative") for p, r in zip(predicted, rows, strict=True)) / 60
    assert accuracy >= 0.85


def test_classifier_reward_reads_the_target_label_from_meta():
    classifier = intent_classifier()
    texts = ["Please book a table for two at seven.", "I will call you tomorrow."]
    probs = classifier.probabilities(texts)
    meta = [{"intent": "directive"}, {"intent": "commissive"}]
    reward = ClassifierReward(classifier, "meta:intent", name="intent")
    expected = [float(probs[0, 2]), float(probs[1, 3])]  # INTENT_LABELS: inform, question, directive, commissive
    assert reward(["", ""], texts, [[], []], meta) == pytest.approx(expected)
    assert reward(["", ""], texts, [[], []], meta)[0] > 0.5  # "Please ..." is a directive
    with pytest.raises(ValueError, match=r"sample 0 has no meta\['intent'\]"):
        reward([""], texts[:1], [[]], [{}])
    fixed = ClassifierReward(classifier, "question", name="q")
    assert fixed([""], texts[:1], [[]], [{}]) == pytest.approx([float(probs[0, 1])])


def test_classifier_is_cached_by_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LMGYM_CACHE", str(tmp_path))
    calls = []

    def data():
        calls.append(1)
        return ["great film, loved it", "awful and boring"], ["positive", "negative"]

    first = cached_classifier("toy", data, ("negative", "positive"))
    files = list((tmp_path / "classifiers").glob("toy-*.safetensors"))
    assert len(files) == 1
    loaded = EmbeddingClassifier.load(files[0])
    assert loaded.labels == first.labels and torch.equal(loaded.weight, first.weight)
    second = cached_classifier("toy", data, ("negative", "positive"))  # read back, not refit
    assert torch.equal(second.bias, first.bias)
    assert first.predict(["loved it, great"]) == ["positive"]
    with pytest.raises(ValueError, match=r"training labels \['neutral'\]"):
        cached_classifier("toy2", lambda: (["meh"], ["neutral"]), ("negative", "positive"))
