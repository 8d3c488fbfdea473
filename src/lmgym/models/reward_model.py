"""A reward model: a scalar head on a text model, r(prompt, response) = w·pool(trunk(prompt + response)) + b.

The trunk is an encoder, a causal LM or an encoder-decoder (its encoder); `lmgym rm train` fits it to
comparisons (lmgym.algos.rm, lmgym.algos.rm_train) and writes a folder that `load_reward_model` reads and
`lmgym.rewards.reward_model.RewardModelReward` turns into a reward: ``reward_model.json`` (trunk kind,
pooling, normalisation, held-out accuracy), ``head.safetensors`` and ``trunk/`` (the text model and its
tokenizer).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from lmgym.errors import MissingFileError
from lmgym.models.encoder import BUNDLED_ENCODER, bundled_encoder_path
from lmgym.models.loading import ModelLoadError, check_safetensors, resolve_model_path

META_FILE = "reward_model.json"
HEAD_FILE = "head.safetensors"
TRUNK_DIR = "trunk"


def load_trunk(name: str) -> tuple[PreTrainedModel, Any, str]:
    """A text model without its LM head, its tokenizer, and its kind ('encoder', 'causal', 'seq2seq')."""
    if name in ("tiny", "tiny-encoder"):
        from lmgym.models.tiny import tiny_model, tiny_tokenizer

        if name == "tiny":
            model, tokenizer = tiny_model()
            return model.model, tokenizer, "causal"
        tokenizer = tiny_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id,
            )
            return BertModel(config, add_pooling_layer=False), tokenizer, "encoder"
    source = str(bundled_encoder_path()) if name == BUNDLED_ENCODER else resolve_model_path(name)
    if Path(source).is_dir():
        check_safetensors(Path(source))
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, use_safetensors=True)
    except OSError as err:
        raise ModelLoadError(f"could not load reward model trunk {name!r}: {err}") from None
    if getattr(config, "is_encoder_decoder", False):
        kind = "seq2seq"
    elif getattr(config, "is_decoder", False) or any(a.endswith("ForCausalLM") for a in config.architectures or []):
        kind = "causal"
    else:
        kind = "encoder"
    return model, tokenizer, kind


class RewardModel(nn.Module):
    """r(prompt, response) = w·pool(trunk(prompt + response)) + b, then (r − mean) / std when normalised."""

    def __init__(self, trunk: PreTrainedModel, tokenizer, kind: str, pooling: str, max_length: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # a long prompt loses its beginning, never the response
        self.kind = kind
        self.pooling = ("last" if kind == "causal" else "mean") if pooling == "auto" else pooling
        self.max_length = max_length
        hidden = trunk.config.get_text_config().hidden_size if hasattr(trunk.config, "get_text_config") else None
        hidden = hidden or getattr(trunk.config, "d_model", None) or trunk.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, prompts: Sequence[str], responses: Sequence[str], normalized: bool = False) -> torch.Tensor:
        """Scores [N] of each prompt + response (the response continues the prompt's text)."""
        enc = self.tokenizer(
            [p + r for p, r in zip(prompts, responses, strict=True)],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.head.weight.device)
        if self.kind == "seq2seq":
            states = self.trunk.get_encoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        else:
            states = self.trunk(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        hidden = states.last_hidden_state.float()  # [N, T, H]
        mask = enc["attention_mask"].unsqueeze(-1).float()  # [N, T, 1]
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # right padding: the last real token of row i is at lengths[i] − 1
            last = enc["attention_mask"].sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        rewards = self.head(pooled).squeeze(-1)
        return (rewards - self.mean) / self.std if normalized else rewards

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """Normalised rewards, in inference mode and batches."""
        self.eval()
        out: list[float] = []
        for start in range(0, len(responses), batch_size):
            out += self(prompts[start : start + batch_size], responses[start : start + batch_size], True).tolist()
        return out

    def save(self, folder: Path, meta: dict[str, Any]) -> None:
        """Write the model into ``folder`` (a temporary sibling renamed into place: never half-written)."""
        folder = Path(folder)
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.trunk.save_pretrained(tmp / TRUNK_DIR)
        self.tokenizer.save_pretrained(tmp / TRUNK_DIR)
        state = {"weight": self.head.weight, "bias": self.head.bias, "mean": self.mean, "std": self.std}
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / HEAD_FILE))
        info = {"kind": self.kind, "pooling": self.pooling, "max_length": self.max_length, **meta}
        (tmp / META_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        # Keep the run's other files (metrics, comparisons) when re-saving into an existing folder.
        if folder.exists():
            for item in folder.iterdir():
                if not (tmp / item.name).exists():
                    os.replace(item, tmp / item.name)
            shutil.rmtree(folder)
        os.replace(tmp, folder)


def load_reward_model(path: str | Path) -> tuple[RewardModel, dict[str, Any]]:
    """A reward model written by `lmgym rm train`, and its metadata."""
    path = Path(path).expanduser()
    if not (path / META_FILE).exists():
        raise MissingFileError(f"{path} is not a reward model folder (no {META_FILE}); train one with `lmgym rm train`")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    trunk_dir = path / TRUNK_DIR
    check_safetensors(trunk_dir)
    trunk = AutoModel.from_pretrained(trunk_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(trunk_dir)
    model = RewardModel(trunk, tokenizer, meta["kind"], meta["pooling"], meta["max_length"])
    state = load_file(str(path / HEAD_FILE))
    model.head.load_state_dict({"weight": state["weight"], "bias": state["bias"]})
    model.mean.copy_(state["mean"])
    model.std.copy_(state["std"])
    return model.eval(), meta
