"""Tiny randomly initialised models for smoke tests and unit tests.

``tiny`` is a two-layer Llama, ``tiny-seq2seq`` a two-layer T5; both share a small
byte-level BPE tokenizer trained on the spot on a fixed corpus, so they need no
download and are identical on every machine (seeded initialisation).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

TINY_VOCAB = 512
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]

_WORDS = (
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "of",
    "to",
    "in",
    "on",
    "at",
    "for",
    "with",
    "from",
    "by",
    "is",
    "was",
    "are",
    "were",
    "be",
    "been",
    "it",
    "this",
    "that",
    "these",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "actress",
    "director",
    "scene",
    "scenes",
    "character",
    "characters",
    "cast",
    "music",
    "ending",
    "good",
    "great",
    "love",
    "loved",
    "wonderful",
    "excellent",
    "beautiful",
    "best",
    "fun",
    "enjoyed",
    "brilliant",
    "amazing",
    "happy",
    "bad",
    "awful",
    "boring",
    "terrible",
    "worst",
    "hate",
    "hated",
    "dull",
    "poor",
    "weak",
    "sad",
    "slow",
    "mess",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "me",
    "my",
    "his",
    "her",
    "our",
    "their",
    "very",
    "really",
    "quite",
    "too",
    "so",
    "not",
    "no",
    "yes",
    "first",
    "second",
    "last",
    "new",
    "old",
    "long",
    "short",
    "little",
    "big",
    "small",
    "time",
    "year",
    "day",
    "night",
    "world",
    "life",
    "people",
    "man",
    "woman",
)


def _corpus() -> list[str]:
    from lmgym.data.tasks.sentiment import build_prompts

    lines = build_prompts(seed=1234, n=400)
    # Repeated so that the most frequent of these words become single tokens.
    lines += [" " + " ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 6)] * 30
    return lines


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )
    tok.model_max_length = 512
    return tok


def tiny_model(seq2seq: bool = False, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    tok = tiny_tokenizer()
    vocab = len(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if seq2seq:
            config = T5Config(
                vocab_size=vocab,
                d_model=64,
                d_ff=128,
                d_kv=16,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                decoder_start_token_id=tok.pad_token_id,
                tie_word_embeddings=True,
            )
            model: PreTrainedModel = T5ForConditionalGeneration(config)
        else:
            config = LlamaConfig(
                vocab_size=vocab,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=512,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id,
                tie_word_embeddings=True,
            )
            model = LlamaForCausalLM(config)
    return model, tok
