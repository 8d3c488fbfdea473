"""LoRA adapters through peft.

The policy is the base model with adapters (``W x + (alpha/r)·B A x``; B starts at zero, so the first
policy equals the base model). Only the adapters train; the base weights are frozen and shared: the
reference policy is the same module run with its adapters switched off (`adapters_disabled`), so a
LoRA run holds one copy of the base weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

from lmgym.config import PeftSettings
from lmgym.errors import InputError


def add_lora(model: PreTrainedModel, settings: PeftSettings, is_seq2seq: bool, base_name: str) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model; its base weights are frozen and stay where they are (no copy)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        target_modules=settings.target_modules,
        bias=settings.bias,
        lora_dropout=0.0,  # the policy runs in eval mode (PPO's ratio must not see dropout noise)
        task_type=TaskType.SEQ_2_SEQ_LM if is_seq2seq else TaskType.CAUSAL_LM,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise InputError(f"peft.target_modules={settings.target_modules!r}: {err} (linear layers: {names})") from None
    # The name lmgym loads the base by ('tiny', the bundled alias, a folder or hub id), kept in adapter_config.json.
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model: the reference policy of a LoRA run."""
    with model.disable_adapter():
        yield


def save_adapter(model: nn.Module, folder: Path, merged_folder: Path | None = None) -> None:
    """Write the adapter (adapter_config.json + adapter_model.safetensors) to ``folder`` and, with
    ``merged_folder``, the model with the adapters merged into its weights as a plain checkpoint.

    The merge runs on a copy, so the live model keeps its frozen base weights bit for bit."""
    # lmgym never resizes the embeddings; "auto" would look the base model up on the hub to find out.
    model.save_pretrained(folder, save_embedding_layers=False)
    if merged_folder is not None:
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(merged_folder)


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter folder was trained on (``base_model_name_or_path``), or None if it is not one."""
    config = Path(folder) / "adapter_config.json"
    if not config.exists():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
