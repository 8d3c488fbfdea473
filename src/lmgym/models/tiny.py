"""Tiny randomly initialised models for smoke tests and unit tests.

``tiny`` is a two-layer Llama, ``tiny-seq2seq`` a two-layer T5; both share a small
byte-level BPE tokenizer shipped with lmgym (models/data/tiny_tokenizer.json), so they
need no download and are identical on every machine (seeded initialisation).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer
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
# A byte-level BPE of TINY_VOCAB tokens (SPECIAL_TOKENS first), trained once on ~400 short movie-review
# sentences and a list of common words, and kept as a file: building a tiny model needs no corpus, no task
# and no training, and the tokenizer is the same everywhere.
TOKENIZER_FILE = Path(__file__).with_name("data") / "tiny_tokenizer.json"


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return TOKENIZER_FILE.read_text(encoding="utf-8")


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
