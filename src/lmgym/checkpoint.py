"""Atomic checkpoints in safetensors + JSON (no pickle is written or read).

``checkpoints/step-N/`` holds ``policy.safetensors`` (LM, value head, critic),
``optimizer.safetensors`` + ``optimizer.json`` and ``trainer_state.json``. A
checkpoint is written under a temporary name, fsynced and renamed, and old ones are
renamed to a hidden name before they are deleted, so every ``step-N`` folder is
complete at any moment a process may be killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from lmgym.errors import InputError, MissingFileError

STEP_RE = re.compile(r"^step-(\d+)$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with f.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def optimizer_to_safetensors(
    optimizer: torch.optim.Optimizer | dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON of an optimizer (or of its ``state_dict()``)."""
    state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    optimizer.load_state_dict(optimizer_state(tensors, meta))


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    """The ``state_dict()`` that `optimizer_to_safetensors` wrote."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        per_param.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        per_param.setdefault(int(idx), {})[key] = value
    return {"state": per_param, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: Path,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    extra_modules: dict[str, torch.nn.Module] | None = None,
    policy_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """``extra_modules`` (file name → module, e.g. NLPO's mask policy) land in the same
    temporary folder, so they are committed by the same rename. ``policy_state`` and ``optimizer_state``
    replace the modules' own state dicts (a sharded run passes its gathered, whole tensors)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if policy_state is None:
        save_model(policy, str(tmp / "policy.safetensors"))
    else:
        save_file({k: v.contiguous() for k, v in policy_state.items()}, str(tmp / "policy.safetensors"))
    for file_name, module in (extra_modules or {}).items():
        save_model(module, str(tmp / file_name))
    tensors, meta = optimizer_to_safetensors(optimizer_state if optimizer_state is not None else optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1), encoding="utf-8")
    _fsync_tree(tmp)
    if directory.exists():
        _discard(directory)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    return directory


def _discard(path: Path) -> None:
    """Delete a folder so that a crash half-way never leaves something that looks like a checkpoint:
    it is first renamed (atomic) to a hidden name that `list_checkpoints` ignores."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_partial(root: Path) -> None:
    """Remove what a killed process left half-written: temporary and half-deleted checkpoint folders."""
    root = Path(root)
    if root.exists():
        for path in root.iterdir():
            if path.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)


def reject_after(root: Path, step: int) -> list[Path]:
    """Set aside checkpoints newer than ``step`` (renamed ``rejected-step-N``, kept for inspection),
    so that the newest complete checkpoint, the one ``--resume`` loads, is ``step``'s."""
    moved = []
    for n, path in list_checkpoints(root):
        if n > step:
            target = path.with_name(f"rejected-{path.name}")
            if target.exists():
                shutil.rmtree(target)
            os.replace(path, target)
            moved.append(target)
    return moved


def load_checkpoint(
    directory: Path,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    dist: Any = None,
    trainable_only: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint into the modules and optimizer; ``dist`` (lmgym.distributed.Distributed) loads the
    whole tensors into a sharded policy, each rank keeping its slice. ``trainable_only``: the checkpoint holds
    the policy's trainable tensors alone (LoRA: the frozen base comes from the model folder)."""
    directory = Path(directory)
    sharded = dist is not None and dist.sharded
    if trainable_only:
        _load_trainable(policy, load_file(str(directory / "policy.safetensors")), directory)
    elif sharded:
        dist.load_full_state_dict(policy, load_file(str(directory / "policy.safetensors")))
    else:
        load_model(policy, str(directory / "policy.safetensors"))
    for file_name, module in (extra_modules or {}).items():
        if not (directory / file_name).exists():
            raise MissingFileError(f"checkpoint {directory} lacks {file_name}; it was written by another algorithm")
        load_model(module, str(directory / file_name))
    if optimizer is not None:
        meta = json.loads((directory / "optimizer.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "optimizer.safetensors"))
        if sharded:
            dist.load_full_optimizer_state(policy, optimizer, optimizer_state(tensors, meta))
        else:
            optimizer_from_safetensors(optimizer, tensors, meta)
    return json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))


def _load_trainable(policy: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    missing, unexpected = policy.load_state_dict(state, strict=False)
    params = dict(policy.named_parameters())
    lacking = [name for name in missing if name in params and params[name].requires_grad]
    if unexpected or lacking:
        raise InputError(
            f"checkpoint {directory} does not match this run's trainable weights (missing {lacking[:3]}, unexpected "
            f"{unexpected[:3]}); was it written with other peft settings?"
        )


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.exists():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_RE.match(path.name)
        if match and (path / "trainer_state.json").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(root)[:-keep]:
        _discard(path)
