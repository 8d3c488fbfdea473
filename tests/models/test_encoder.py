"""The bundled sentence encoder: found offline, same vectors as sentence-transformers, batching-invariant."""

from __future__ import annotations

import pytest
import torch

from lmgym.models.encoder import TextEncoder, bundled_encoder_path, cosine, embed, load_encoder
from lmgym.models.loading import ModelLoadError

TEXTS = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply on Tuesday.",
    "short",
    "",
]


def test_bundled_folder_holds_a_bert_checkpoint() -> None:
    folder = bundled_encoder_path()
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def test_embeddings_match_sentence_transformers() -> None:
    # sentence-transformers runs the model's own pipeline (modules.json: Transformer -> mean Pooling -> Normalize).
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(bundled_encoder_path()), device="cpu").encode(
        TEXTS, convert_to_tensor=True, normalize_embeddings=True
    )
    ours = embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    torch.testing.assert_close(ours, reference.cpu().float(), atol=1e-5, rtol=1e-4)


def test_unit_norm_and_batch_size_invariance() -> None:
    big = embed(TEXTS, batch_size=64)
    small = embed(TEXTS, batch_size=2)
    torch.testing.assert_close(big, small, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(big.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_cosine_orders_paraphrase_above_unrelated() -> None:
    para, unrelated = cosine([TEXTS[0], TEXTS[0]], [TEXTS[1], TEXTS[2]])
    assert para > unrelated + 0.3
    assert cosine([TEXTS[2]], [TEXTS[2]])[0] == pytest.approx(1.0, abs=1e-5)


def test_loader_is_cached_and_empty_input_is_empty() -> None:
    assert load_encoder() is load_encoder()
    assert embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of texts"):
        embed("one string")  # type: ignore[arg-type]


def test_last_token_pooling_picks_the_last_real_token() -> None:
    encoder = TextEncoder(pooling="last", normalize=False)
    texts = ["one two three four five", "one"]
    pooled = encoder.embed(texts)
    # Alone (no padding), the last token's state is the last row of the sequence.
    for i, text in enumerate(texts):
        enc = encoder.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            states = encoder.model(**enc).last_hidden_state[0]
        torch.testing.assert_close(pooled[i], states[-1], atol=1e-4, rtol=1e-4)


def test_missing_encoder_path_is_named(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        TextEncoder(str(tmp_path / "no-such-encoder"))
