"""Policy: a causal or encoder-decoder LM with a value head, scored in one pass.

Shapes: ``B`` samples, ``P`` prompt tokens (left-padded for causal models,
right-padded for encoder-decoders), ``G`` generated tokens (right-padded after
EOS), ``V`` vocabulary, ``H`` hidden size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class TokenBatch:
    prompt_ids: torch.Tensor  # [B, P]
    prompt_mask: torch.Tensor  # [B, P]
    gen_ids: torch.Tensor  # [B, G]
    gen_mask: torch.Tensor  # [B, G] 1 up to and including the first EOS

    def index(self, idx: torch.Tensor) -> TokenBatch:
        return TokenBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.gen_ids[idx], self.gen_mask[idx])


@dataclass
class Scores:
    logprobs: torch.Tensor  # [B, G] log π(a_t | s_t)
    entropy: torch.Tensor | None = None  # [B, G]
    values: torch.Tensor | None = None  # [B, G] V(s_t)
    logits: torch.Tensor | None = field(default=None, repr=False)  # [B, G, V], temperature-scaled


@contextmanager
def head_inputs(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Record the inputs of the LM head: the final hidden states, after the last
    norm and any model-specific scaling, exactly what the logits are made from."""
    captured: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def forward_generated(model: PreTrainedModel, is_seq2seq: bool, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass; returns logits and final hidden states at the generated positions.

    Position ``t`` holds the state before generated token ``t``: its logits score
    that token, its hidden state feeds the value head.
    """
    G = batch.gen_ids.shape[1]
    with head_inputs(model) as hidden:
        if is_seq2seq:
            start = torch.full_like(batch.gen_ids[:, :1], model.config.decoder_start_token_id)
            out = model(
                input_ids=batch.prompt_ids,
                attention_mask=batch.prompt_mask,
                decoder_input_ids=torch.cat([start, batch.gen_ids[:, :-1]], dim=1),
                decoder_attention_mask=torch.cat([torch.ones_like(start), batch.gen_mask[:, :-1]], dim=1),
                use_cache=False,
            )
            return out.logits, hidden[-1]
        input_ids = torch.cat([batch.prompt_ids, batch.gen_ids], dim=1)
        attention_mask = torch.cat([batch.prompt_mask, batch.gen_mask], dim=1)
        # Left padding shifts every position; HF's forward (unlike generate) does not
        # derive position ids from the mask, so pass them.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": G + 1} if getattr(model, "_supports_logits_to_keep", lambda: False)() else {}
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
        )
    return out.logits[:, -(G + 1) : -1], hidden[-1][:, -(G + 1) : -1]


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(F.log_softmax(logits, dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def make_generation_config(tokenizer: PreTrainedTokenizerBase, **settings: object) -> GenerationConfig:
    """A GenerationConfig from our settings only, so a checkpoint's own defaults
    (top_k=50, repetition penalties, ...) never silently change the sampling
    distribution that PPO's log-probs assume."""
    return GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
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
            raise ValueError(f"value_head must be 'shared', 'separate' or 'none', got {value_head!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.is_seq2seq = is_seq2seq
        self.value_mode = value_head
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
        logits, hidden = forward_generated(self.model, self.is_seq2seq, batch)
        return self._scores(batch, logits, hidden, temperature, with_values, with_entropy, keep_logits)

    def _scores(
        self,
        batch: TokenBatch,
        logits: torch.Tensor,
        hidden: torch.Tensor,
        temperature: float,
        with_values: bool,
        with_entropy: bool,
        keep_logits: bool,
    ) -> Scores:
        logits = logits.float() / temperature
        values = None
        if with_values and self.value_head is not None:
            if self.critic is not None:
                _, hidden = forward_generated(self.critic, self.is_seq2seq, batch)
            values = self.value_head(hidden.float()).squeeze(-1)
        return Scores(
            logprobs=logprobs_from_logits(logits, batch.gen_ids),
            entropy=entropy_from_logits(logits) if with_entropy else None,
            values=values,
            logits=logits if keep_logits else None,
        )

    @torch.no_grad()
    def generate_and_score(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generation: GenerationConfig,
        temperature: float = 1.0,
        logits_processor: LogitsProcessorList | None = None,
    ) -> tuple[TokenBatch, Scores]:
        """Sample, and keep the logits and hidden states generation computed anyway, so
        the behaviour policy's log-probs and values cost no second forward pass.

        The logits are the model's raw ones (before any sampling processor); KV-cached
        decoding matches a full forward pass to float rounding (~1e-6).
        """
        generation = copy.deepcopy(generation)
        generation.return_dict_in_generate = True
        generation.output_logits = True
        with head_inputs(self.model) as hidden:
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=generation,
                logits_processor=logits_processor,
            )
        gen_ids = out.sequences[:, 1:] if self.is_seq2seq else out.sequences[:, prompt_ids.shape[1] :]
        G = gen_ids.shape[1]
        batch = TokenBatch(prompt_ids, prompt_mask, gen_ids, self._mask(gen_ids))
        logits = torch.stack(out.logits[:G], dim=1)  # [B, G, V]
        states = torch.stack([h[:, -1] for h in hidden[:G]], dim=1)  # [B, G, H]
        return batch, self._scores(batch, logits, states, temperature, True, True, False)

    def _mask(self, gen_ids: torch.Tensor) -> torch.Tensor:
        return generation_mask(gen_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generation: GenerationConfig,
        logits_processor: LogitsProcessorList | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample continuations; returns ``gen_ids`` [B, G] and ``gen_mask`` [B, G]."""
        out = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=generation,
            logits_processor=logits_processor,
        )
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
            raise ValueError(f"model.trainable_layers: found no transformer blocks in {type(model).__name__}")
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
    """A frozen copy of the initial policy's language model."""

    def __init__(self, model: PreTrainedModel, is_seq2seq: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.is_seq2seq = is_seq2seq

    @torch.inference_mode()
    def logprobs(self, batch: TokenBatch, temperature: float = 1.0) -> torch.Tensor:
        logits, _ = forward_generated(self.model, self.is_seq2seq, batch)
        return logprobs_from_logits(logits.float() / temperature, batch.gen_ids)
