"""Policy: a causal or encoder-decoder LM with a value head, scored in one pass.

Shapes: ``B`` samples, ``P`` prompt tokens (left-padded for causal models,
right-padded for encoder-decoders), ``G`` generated tokens (right-padded after
EOS), ``V`` vocabulary, ``H`` hidden size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from lmgym.errors import InputError
from lmgym.models.categorical import inverse_cdf_sampling
from lmgym.models.chat import stop_token_ids
from lmgym.models.grouped_attention import cpu_grouped_query_attention
from lmgym.models.logprobs import token_logprobs
from lmgym.models.lora import adapters_disabled, is_peft_model
from lmgym.models.packing import Packed, can_pack, pack
from lmgym.models.prefill import prefill_distinct_prompts
from lmgym.models.small_products import transposed_small_products
from lmgym.models.trunk import (
    TrunkStates,
    can_start_from,
    capture_block_input,
    frozen_depth,
    share_frozen,
    start_at_block,
    trunk_owners,
)


@dataclass
class TokenBatch:
    prompt_ids: torch.Tensor  # [B, P]
    prompt_mask: torch.Tensor  # [B, P]
    gen_ids: torch.Tensor  # [B, G]
    gen_mask: torch.Tensor  # [B, G] 1 up to and including the first EOS
    # The frozen bottom's output, kept from generation (models/trunk.py); None: passes start at the embeddings.
    trunk: TrunkStates | None = field(default=None, repr=False)

    def index(self, idx: torch.Tensor) -> TokenBatch:
        trunk = self.trunk.index(idx) if self.trunk is not None else None
        return TokenBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.gen_ids[idx], self.gen_mask[idx], trunk)

    def trimmed(self) -> TokenBatch:
        """Without the leading prompt columns that are padding in every row (a causal model's left padding, after
        `index` picked a subset of rows): they change nothing but the work."""
        real = torch.nonzero(self.prompt_mask.any(0)).flatten()
        start = int(real[0]) if len(real) else 0
        if start == 0:
            return self
        trunk = self.trunk
        if trunk is not None:
            trunk = TrunkStates(trunk.states[:, start:], trunk.depth, trunk.owners)
        return TokenBatch(self.prompt_ids[:, start:], self.prompt_mask[:, start:], self.gen_ids, self.gen_mask, trunk)

    def to(self, device: torch.device) -> TokenBatch:
        """The batch on ``device`` (itself when it is already there, as on a CPU-only run)."""
        if self.gen_ids.device == device and self.prompt_ids.device == device:
            return self
        trunk = self.trunk
        if trunk is not None:
            trunk = TrunkStates(trunk.states.to(device), trunk.depth, trunk.owners)
        tensors = (self.prompt_ids, self.prompt_mask, self.gen_ids, self.gen_mask)
        return TokenBatch(*(t.to(device) for t in tensors), trunk)


@dataclass
class Scores:
    logprobs: torch.Tensor  # [B, G] log π(a_t | s_t)
    entropy: torch.Tensor | None = None  # [B, G]
    values: torch.Tensor | None = None  # [B, G] V(s_t)
    logits: torch.Tensor | None = field(default=None, repr=False)  # [B, G, V], temperature-scaled


@contextmanager
def head_inputs(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Record the inputs of the LM head: the final hidden states, after the last
    norm and any model-specific scaling, exactly what the logits are made from.

    The input is made contiguous first: with ``logits_to_keep`` it is a slice of the
    [B, S, H] states, and a strided 3-D input turns the head's matmul into a batched
    one of B small products (measured: ~6x slower than one [B·G, H] × [H, V] product)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> tuple:
        states = args[0].contiguous()
        captured.append(states)
        return (states, *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass
class Forward:
    """One scoring pass: rows of logits [N, V] and of final hidden states [N, H], and the row that scores each
    generated token (``rows`` [B, G]; None: N = B·G, in order)."""

    logits: torch.Tensor
    hidden: torch.Tensor
    shape: tuple[int, int]  # (B, G)
    rows: torch.Tensor | None = None

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row ``values`` [N, ...] as [B, G, ...] (a copy only when rows are shared)."""
        if self.rows is None:
            return values.reshape(*self.shape, *values.shape[1:])
        return values[self.rows]


def forward_rows(model: PreTrainedModel, is_seq2seq: bool, batch: TokenBatch, packed: bool = True) -> Forward:
    """One forward pass; the logits and final hidden states that score the generated tokens.

    The state before generated token ``t`` scores it: its logits give the token's log-probability, its hidden
    state feeds the value head. With ``packed`` (and a causal LM that allows it), a prompt shared by several
    completions runs once (models/packing.py). On a CPU, grouped-query attention runs without copies of the
    keys and values per query head (models/grouped_attention.py)."""
    with cpu_grouped_query_attention(model):
        return _forward_rows(model, is_seq2seq, batch, packed)


def _forward_rows(model: PreTrainedModel, is_seq2seq: bool, batch: TokenBatch, packed: bool) -> Forward:
    B, G = batch.gen_ids.shape
    batch = batch.to(next(model.parameters()).device)
    if is_seq2seq:
        with head_inputs(model) as hidden:
            start = torch.full_like(batch.gen_ids[:, :1], model.config.decoder_start_token_id)
            out = model(
                input_ids=batch.prompt_ids,
                attention_mask=batch.prompt_mask,
                decoder_input_ids=torch.cat([start, batch.gen_ids[:, :-1]], dim=1),
                decoder_attention_mask=torch.cat([torch.ones_like(start), batch.gen_mask[:, :-1]], dim=1),
                use_cache=False,
            )
        return Forward(out.logits.reshape(B * G, -1), hidden[-1].reshape(B * G, -1), (B, G))
    batch = batch.trimmed()
    if packed and can_pack(model, batch.prompt_ids, batch.prompt_mask):
        layout = pack(
            batch.prompt_ids, batch.prompt_mask, batch.gen_ids, batch.gen_mask, model.config._attn_implementation
        )
        if layout is not None:
            return _forward_packed(model, batch, layout)
    # The last token is never scored: the input stops before it, and the head runs at the G positions before it.
    input_ids = torch.cat([batch.prompt_ids, batch.gen_ids[:, :-1]], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.gen_mask[:, :-1]], dim=1)
    # Left padding shifts every position; HF's forward (unlike generate) does not derive position ids from the
    # mask, so pass them.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"logits_to_keep": G} if getattr(model, "_supports_logits_to_keep", lambda: False)() else {}
    # With the frozen bottom's states kept from generation (models/trunk.py), the pass starts at the first
    # trainable block.
    from_trunk = can_start_from(model, batch.trunk)
    with head_inputs(model) as hidden, start_at_block(model, batch.trunk) if from_trunk else nullcontext():
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
        )
    logits, states = out.logits[:, -G:], hidden[-1][:, -G:]
    return Forward(logits.reshape(B * G, -1), states.reshape(B * G, -1), (B, G))


def _forward_packed(model: PreTrainedModel, batch: TokenBatch, layout: Packed) -> Forward:
    trunk = batch.trunk
    from_trunk = can_start_from(model, trunk)
    if from_trunk:  # the kept states, moved to the packed layout
        flat = trunk.states.reshape(-1, trunk.states.shape[-1])
        trunk = TrunkStates(flat[layout.sources], trunk.depth, trunk.owners)
    with head_inputs(model) as hidden, start_at_block(model, trunk) if from_trunk else nullcontext():
        out = model(
            input_ids=layout.input_ids,
            attention_mask=layout.attention_mask,
            position_ids=layout.position_ids,
            use_cache=False,
            logits_to_keep=layout.keep,
        )
    return Forward(out.logits, hidden[-1], tuple(batch.gen_ids.shape), layout.rows)


def forward_generated(model: PreTrainedModel, is_seq2seq: bool, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """`forward_rows` as logits [B, G, V] and final hidden states [B, G, H] at the generated positions."""
    fwd = forward_rows(model, is_seq2seq, batch)
    return fwd.per_token(fwd.logits), fwd.per_token(fwd.hidden)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return token_logprobs(logits, tokens)[0]


def make_generation_config(tokenizer: PreTrainedTokenizerBase, **settings: object) -> GenerationConfig:
    """A GenerationConfig from our settings only, so a checkpoint's own defaults
    (top_k=50, repetition penalties, ...) never silently change the sampling
    distribution that PPO's log-probs assume."""
    stops = stop_token_ids(tokenizer)
    return GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops[0] if len(stops) == 1 else stops or None,
        bos_token_id=tokenizer.bos_token_id,
        **settings,
    )


class Policy(nn.Module):
    """A language model with a value head.

    ``value_head="shared"`` puts a linear head on the LM's final hidden state;
    ``"separate"`` gives the critic its own copy of the network; ``"none"`` builds
    no critic (critic-free algorithms).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        is_seq2seq: bool,
        value_head: str = "shared",
    ) -> None:
        super().__init__()
        # Dropout stays off for the whole run: it would make π_old and πθ differ on
        # identical weights and add noise to the PPO ratio.
        model.eval()
        if value_head not in ("shared", "separate", "none"):
            raise InputError(f"value_head must be 'shared', 'separate' or 'none', got {value_head!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.is_seq2seq = is_seq2seq
        self.value_mode = value_head
        # Set when FSDP shards the weights (every forward pass is then collective): generation keeps the ranks
        # in step and takes no shortcut that depends on a rank's own prompts.
        self.synced = False
        self.critic = copy.deepcopy(model).requires_grad_(True) if value_head == "separate" else None
        hidden = model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config") else None
        hidden = hidden or getattr(model.config, "d_model", None) or model.config.hidden_size
        self.value_head = nn.Linear(hidden, 1) if value_head != "none" else None
        if self.value_head is not None:
            # Zero init: V ≡ 0 at first, so early advantages are plain returns-to-go
            # instead of noise from a random critic, and the value loss sends no
            # gradient into a shared trunk until the head has learned something.
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_values(self) -> bool:
        return self.value_head is not None

    def score(
        self,
        batch: TokenBatch,
        temperature: float = 1.0,
        with_values: bool = True,
        with_entropy: bool = True,
        keep_logits: bool = False,
    ) -> Scores:
        """Log-probs, entropies and values of every generated token in one forward pass."""
        fwd = forward_rows(self.model, self.is_seq2seq, batch)
        return self._scores(batch, fwd, temperature, with_values, with_entropy, keep_logits)

    def _scores(
        self,
        batch: TokenBatch,
        fwd: Forward,
        temperature: float,
        with_values: bool,
        with_entropy: bool,
        keep_logits: bool,
    ) -> Scores:
        logits = fwd.logits
        if temperature != 1.0:  # skips a copy of the logits in the common case
            logits = logits.float() / temperature
        values = None
        if with_values and self.value_head is not None:
            critic = forward_rows(self.critic, self.is_seq2seq, batch) if self.critic is not None else fwd
            values = critic.per_token(self.value_head(critic.hidden.float()).squeeze(-1))
        # The taken tokens' log-probs and the entropies without [N, V] temporaries (models/logprobs.py).
        logprobs, entropy = token_logprobs(logits, batch.gen_ids, fwd.rows, with_entropy)
        return Scores(
            logprobs=logprobs,
            entropy=entropy,
            values=values,
            logits=fwd.per_token(logits.float()) if keep_logits else None,
        )

    @torch.no_grad()
    def generate_and_score(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generation: GenerationConfig,
        temperature: float = 1.0,
        logits_processor: LogitsProcessorList | None = None,
        keep_trunk: bool = False,
        share_prefill: bool = True,
    ) -> tuple[TokenBatch, Scores]:
        """Sample, and keep the logits and hidden states generation computed anyway, so
        the behaviour policy's log-probs and values cost no second forward pass.

        The logits are the model's raw ones (before any sampling processor); KV-cached
        decoding matches a full forward pass to float rounding (~1e-6). With ``keep_trunk``
        and a frozen bottom (models/trunk.py), the batch also keeps that bottom's output.
        With ``share_prefill``, repeated prompts (k completions each) are prefilled once
        (models/prefill.py).
        """
        sequences, beams = generation.num_return_sequences or 1, generation.num_beams or 1
        if sequences > 1 or beams > 1:  # the batch and its scores keep one row per prompt row
            raise InputError(
                "generate_and_score samples one sequence per prompt row, got num_return_sequences="
                f"{sequences} and num_beams={beams}: repeat each prompt row k times instead (as GRPO does)"
            )
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        generation = copy.deepcopy(generation)
        generation.return_dict_in_generate = True
        generation.output_logits = True
        depth = frozen_depth(self.model) if keep_trunk and not self.is_seq2seq else 0
        capture = capture_block_input(self.model, depth) if depth else nullcontext([])
        share = share_prefill and not self.is_seq2seq and not is_peft_model(self.model) and not self.synced
        with head_inputs(self.model) as hidden, capture as kept:
            prefilled = prefill_distinct_prompts(self.model, prompt_ids, prompt_mask) if share else None
            if prefilled is not None and kept:
                kept[0] = kept[0][prefilled[1]]  # the distinct prompts' states, out to every row
            cache = {"cache": prefilled[0]} if prefilled is not None else {}
            out = self._model_generate(prompt_ids, prompt_mask, generation, logits_processor, **cache)
        gen_ids = out.sequences[:, 1:] if self.is_seq2seq else out.sequences[:, prompt_ids.shape[1] :]
        B, G = gen_ids.shape
        trunk = None
        if depth:
            states = torch.cat(kept, dim=1)  # [B, P + G − 1, H]: the prefill, then one position per step
            if states.shape[1] == prompt_ids.shape[1] + G - 1:
                trunk = TrunkStates(states, depth, trunk_owners(self.model, depth))
        batch = TokenBatch(prompt_ids, prompt_mask, gen_ids, self._mask(gen_ids), trunk)
        logits = torch.stack(out.logits[:G], dim=1).reshape(B * G, -1)  # [B·G, V]
        states = torch.stack([h[:, -1] for h in hidden[:G]], dim=1).reshape(B * G, -1)  # [B·G, H]
        return batch, self._scores(batch, Forward(logits, states, (B, G)), temperature, True, True, False)

    def _model_generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generation: GenerationConfig,
        logits_processor: LogitsProcessorList | None,
        **extra: object,
    ):
        """HF ``generate``, sampling each token with one uniform number (models/categorical.py) and decoding's
        few-row products transposed (models/small_products.py). A rank whose sequences have all ended keeps
        joining the others' forward passes (``synced_gpus``)."""
        with inverse_cdf_sampling(), transposed_small_products():
            return self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=generation,
                logits_processor=logits_processor,
                **({"synced_gpus": True} if self.synced else {}),
                **extra,
            )

    def _mask(self, gen_ids: torch.Tensor) -> torch.Tensor:
        return generation_mask(gen_ids, stop_token_ids(self.tokenizer), self.tokenizer.pad_token_id)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generation: GenerationConfig,
        logits_processor: LogitsProcessorList | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample continuations; returns ``gen_ids`` [B, G] and ``gen_mask`` [B, G]."""
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        out = self._model_generate(prompt_ids, prompt_mask, generation, logits_processor)
        gen_ids = out[:, 1:] if self.is_seq2seq else out[:, prompt_ids.shape[1] :]
        return gen_ids, self._mask(gen_ids)


def transformer_blocks(model: nn.Module) -> list[nn.ModuleList]:
    """The stacks of transformer blocks (``layers``, ``h``, ``block``) of a HF model."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "block")
    ]


def freeze(model: PreTrainedModel, embeddings: bool, trainable_layers: int | None) -> None:
    """Freeze the input embeddings / LM head and, optionally, all but the top blocks."""
    if embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                module.requires_grad_(False)
    if trainable_layers is not None:
        stacks = transformer_blocks(model)
        if not stacks:
            raise InputError(f"model.trainable_layers: found no transformer blocks in {type(model).__name__}")
        for stack in stacks:
            for block in list(stack)[: max(len(stack) - trainable_layers, 0)]:
                block.requires_grad_(False)


def generation_mask(
    gen_ids: torch.Tensor, eos_token_id: int | list[int] | None, pad_token_id: int | None
) -> torch.Tensor:
    """1 for generated tokens up to and including the first EOS, 0 after it."""
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    is_end = torch.zeros_like(gen_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_end |= gen_ids == eos
    if not eos_ids and pad_token_id is not None:
        is_end = gen_ids == pad_token_id
    ended_before = (is_end.long().cumsum(-1) - is_end.long()) > 0
    return (~ended_before).long()


class ReferenceModel(nn.Module):
    """The initial policy, frozen: a copy of the language model, or, for a LoRA (peft) model, the policy's
    own module run with its adapters switched off (the base weights are shared, not copied)."""

    def __init__(self, model: PreTrainedModel, is_seq2seq: bool) -> None:
        super().__init__()
        self.is_seq2seq = is_seq2seq
        if is_peft_model(model):
            # Kept out of this module's registry: the parameters belong to the policy (its adapters train).
            self._shared = [model]
        else:
            self.model = copy.deepcopy(model).eval()
            self.model.requires_grad_(False)

    @property
    def shares_base(self) -> bool:
        return hasattr(self, "_shared")

    def share_frozen_trunk(self, policy_model: PreTrainedModel) -> int:
        """Use the policy's frozen embeddings and bottom blocks instead of copies (call after freezing, before
        training): they never change, so this is the same reference in less memory, and it can start from the
        policy's kept trunk states (models/trunk.py). Returns how many blocks are shared."""
        return 0 if self.shares_base else share_frozen(self.model, policy_model)

    @property
    def lm(self) -> nn.Module:
        """The module the reference runs (the LoRA policy's, with adapters off, when it shares the base)."""
        return self._shared[0] if self.shares_base else self.model

    @torch.inference_mode()
    def logprobs(self, batch: TokenBatch, temperature: float = 1.0) -> torch.Tensor:
        with adapters_disabled(self._shared[0]) if self.shares_base else nullcontext():
            fwd = forward_rows(self.lm, self.is_seq2seq, batch)
        logits = fwd.logits if temperature == 1.0 else fwd.logits.float() / temperature
        return token_logprobs(logits, batch.gen_ids, fwd.rows)[0]


def gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation checkpointing of the transformer blocks (used in the update's forward passes only)."""
    # Non-reentrant: the frozen embeddings give the blocks inputs that do not require grad.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer name (transformers 5)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextmanager
def checkpointed_blocks(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Let checkpointing act inside the block: HF checkpoints a block only in training mode, and the policy
    stays in eval mode (no dropout). Only the blocks' own flag is set (their submodules, dropout included,
    stay in eval mode), and only for the update: generation keeps its KV cache."""
    if not enabled:
        yield
        return
    blocks = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    for block in blocks:
        block.training = True
    try:
        yield
    finally:
        for block in blocks:
            block.training = False
