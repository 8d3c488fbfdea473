"""Frozen-trunk reuse for causal LMs trained from their top blocks (``model.trainable_layers``).

When the input embeddings and the bottom ``depth`` transformer blocks are frozen, the hidden states entering
block ``depth`` are a fixed function of the tokens. Generation computes them anyway (its prefill and each
decoding step pass through that block); kept, they let every later pass over the same tokens start at block
``depth``: the reference's score pass and each update's forward (whose frozen part would otherwise run again,
only to feed the trainable blocks). The reference shares these frozen modules with the policy (`share_frozen`),
so the states are exactly its own too. The result equals a full forward pass up to float rounding, like the
generation logits that already stand in for the behaviour policy's log-probs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lmgym.errors import InputError


@dataclass(frozen=True)
class TrunkStates:
    """The input of block ``depth`` at every position but the last: [B, P + G − 1, H]. ``owners`` are the ids of
    the frozen modules (embedding, blocks 0..depth−1) that computed them; only a model built on those very
    modules may start from these states."""

    states: torch.Tensor
    depth: int
    owners: tuple[int, ...]

    def index(self, idx: torch.Tensor) -> TrunkStates:
        return TrunkStates(self.states[idx], self.depth, self.owners)


def _single_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """(parent, attribute, blocks) of a decoder-only model's one stack of blocks, else None."""
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "block")
    ]
    if len(stacks) != 1:
        return None
    name, blocks = stacks[0]
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr, blocks


def frozen_depth(model: nn.Module) -> int:
    """How many bottom blocks (with the input embeddings) are frozen: 0 when the embeddings train, when the
    model is an encoder-decoder, or when its blocks are not one plain stack."""
    if getattr(model.config, "is_encoder_decoder", False) or model.get_input_embeddings().weight.requires_grad:
        return 0
    found = _single_stack(model)
    if found is None:
        return 0
    blocks = found[2]
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return 0  # nothing trains (a frozen model): no trainable blocks to start at


def trunk_owners(model: nn.Module, depth: int) -> tuple[int, ...]:
    found = _single_stack(model)
    if found is None or depth == 0:
        return ()
    return (id(model.get_input_embeddings()), *(id(b) for b in list(found[2])[:depth]))


def can_start_from(model: nn.Module, trunk: TrunkStates | None) -> bool:
    """Whether ``model``'s bottom is made of the very modules that computed ``trunk``."""
    return trunk is not None and trunk.depth > 0 and trunk_owners(model, trunk.depth) == trunk.owners


@contextmanager
def capture_block_input(model: nn.Module, depth: int) -> Iterator[list[torch.Tensor]]:
    """Record the hidden states entering block ``depth`` on each forward call (prefill, then one per step)."""
    captured: list[torch.Tensor] = []
    _, _, blocks = _single_stack(model)

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])

    handle = blocks[depth].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def start_at_block(model: nn.Module, trunk: TrunkStates) -> Iterator[None]:
    """Within this context a forward call runs only blocks ``depth`` and up, fed ``trunk.states`` (the
    embedding lookup still runs; its output is replaced). Masks and positions come from the call as usual."""
    parent, attr, blocks = _single_stack(model)
    first = blocks[trunk.depth]

    def feed(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        current = args[0] if args else kwargs["hidden_states"]
        if current.shape != trunk.states.shape:
            raise InputError(f"trunk states {tuple(trunk.states.shape)} do not fit the input {tuple(current.shape)}")
        states = trunk.states.to(current.dtype)
        if args:
            return (states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states}

    handle = first.register_forward_pre_hook(feed, with_kwargs=True)
    setattr(parent, attr, nn.ModuleList(list(blocks)[trunk.depth :]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)
        handle.remove()


def share_frozen(reference: nn.Module, policy: nn.Module) -> int:
    """Make ``reference`` (a frozen copy of ``policy`` from before training) use the policy's own frozen
    modules: its input embeddings, its bottom blocks and, when frozen, its LM head. Returns the shared depth.
    Saves their memory, and lets the reference start from the policy's `TrunkStates`."""
    depth = frozen_depth(policy)
    ref_stack, pol_stack = _single_stack(reference), _single_stack(policy)
    if depth == 0 or ref_stack is None or pol_stack is None or len(ref_stack[2]) != len(pol_stack[2]):
        return 0
    for i in range(depth):
        ref_stack[2][i] = pol_stack[2][i]
    reference.set_input_embeddings(policy.get_input_embeddings())
    head = policy.get_output_embeddings()
    if head is not None and not any(p.requires_grad for p in head.parameters()):
        reference.set_output_embeddings(head)
    return depth


def copy_above(model: nn.Module, depth: int) -> nn.Module:
    """A frozen copy of a causal LM without its bottom ``depth`` blocks: called with ``inputs_embeds`` = the hidden
    states entering block ``depth``, it gives the model's logits. Its blocks are renumbered (so that its own KV
    cache holds only them); the frozen input embedding and LM head are the model's own, shared, not copied.
    NLPO's mask policy uses it: it differs from the learner only above the frozen trunk."""
    parent, attr, blocks = _single_stack(model)
    shared = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    memo = {id(t): t for m in shared if not any(p.requires_grad for p in m.parameters()) for t in (m, *m.parameters())}
    setattr(parent, attr, nn.ModuleList(list(blocks)[depth:]))
    try:
        top = copy.deepcopy(model, memo)
    finally:
        setattr(parent, attr, blocks)
    for i, block in enumerate(_single_stack(top)[2]):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    top.config.num_hidden_layers = len(blocks) - depth
    if getattr(top.config, "layer_types", None):
        top.config.layer_types = list(top.config.layer_types)[depth:]
    return top.eval().requires_grad_(False)


def load_above(top: nn.Module, model: nn.Module, depth: int) -> None:
    """Copy ``model``'s weights above block ``depth`` into `copy_above`'s ``top`` (block depth + i → block i)."""
    stack = next(name for name, m in model.named_modules() if m is _single_stack(model)[2])
    block = re.compile(rf"^{re.escape(stack)}\.(\d+)\.")
    state = {}
    for name, tensor in model.state_dict().items():
        found = block.match(name)
        if found is None:
            state[name] = tensor
        elif int(found.group(1)) >= depth:
            state[f"{stack}.{int(found.group(1)) - depth}.{name[found.end() :]}"] = tensor
    top.load_state_dict(state)
