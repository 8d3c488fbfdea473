"""Any sequence classifier as a reward and a metric."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lmgym.rewards.catalog import load_metric
from lmgym.rewards.classifier import ClassifierReward


def test_classifier_reward_is_the_label_probability(tiny_classifier) -> None:
    path = tiny_classifier(["NEGATIVE", "POSITIVE"])
    prompts, gens = ["The film was", "I thought it"], [" wonderful and moving.", " dull"]
    model, tok = AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        alone = [torch.softmax(model(**tok(g, return_tensors="pt")).logits[0], -1)[1].item() for g in gens]
        with_prompt = [
            torch.softmax(model(**tok(p + g, return_tensors="pt")).logits[0], -1)[1].item()
            for p, g in zip(prompts, gens, strict=True)
        ]
    by_name = ClassifierReward(str(path), label="positive")  # names match case-insensitively
    assert by_name(prompts, gens, [[], []], [{}, {}]) == pytest.approx(alone, abs=1e-6)  # batched with padding
    by_index = ClassifierReward(str(path), label=1, include_prompt=True)
    assert by_index(prompts, gens, [[], []], [{}, {}]) == pytest.approx(with_prompt, abs=1e-6)
    metric = load_metric("classifier", classifier=str(path), label="POSITIVE")
    result = metric(prompts, gens, [[], []], [{}, {}])["classifier"]
    assert result.per_sample == pytest.approx(alone, abs=1e-6)
    assert result.corpus == pytest.approx(sum(alone) / 2, abs=1e-6)


def test_classifier_errors_name_the_labels_and_the_path(tiny_classifier, tmp_path) -> None:
    path = tiny_classifier(["NEGATIVE", "POSITIVE"])
    with pytest.raises(ValueError, match=r"label 'joy' is not one of classifier .* labels"):
        ClassifierReward(str(path), label="joy")
    with pytest.raises(ValueError, match="label 5 is not one of"):
        ClassifierReward(str(path), label=5)
    from lmgym.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        ClassifierReward(str(tmp_path / "missing" / "model"), label=0)
