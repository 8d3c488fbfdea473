"""Tiny text classifiers built at test time (a 1-layer BERT with the bundled MiniLM's tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from lmgym.models.encoder import bundled_encoder_path


def save_tiny_classifier(folder: Path, labels: list[str], seed: int = 0) -> Path:
    """A randomly initialised classifier with the given label names, saved as safetensors."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_classifier(tmp_path: Path):
    def make(labels: list[str], seed: int = 0) -> Path:
        return save_tiny_classifier(tmp_path / f"clf-{'-'.join(labels)}-{seed}", labels, seed)

    return make
