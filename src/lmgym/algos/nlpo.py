"""NLPO, Natural Language Policy Optimization (Ramamurthy et al., 2022, "Is RL (Not) for NLP?").

PPO whose action space is pruned, at every step, to the top-p tokens of a *mask policy*
π_mask: a frozen copy of the learner, refreshed (weights copied from πθ) every μ =
``mask_update_every`` iterations. The mask is the nucleus of π_mask at the state s_t:

    A_t        = smallest set of tokens with Σ_{a∈A_t} π_mask(a|s_t) ≥ mask_top_p
                 (at least ``min_tokens_to_keep`` tokens; special tokens, EOS included, always in)
    π̃θ(a|s_t)  = πθ(a|s_t)·[a ∈ A_t] / Σ_{a'∈A_t} πθ(a'|s_t)       the masked, renormalised policy

Generation samples from π̃θ, and the PPO loss is taken on π̃θ with the masks A_t that
were recorded during the rollout (masked means over tokens, per minibatch):

    ratio      = exp(log π̃θ(a|s) − log π̃_old(a|s))
    L_clip     = E[ max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)) ]
    L_value    = ½·E[ max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²) ]
    loss       = L_clip + vf_coef·L_value − ent_coef·H[π̃θ]

The KL penalty of the reward, R̂ = R − β·(log πθ − log π0), uses the *unmasked* log-probs
(``rollout.logprobs``); the masked ones live in ``rollout.extras["masked_logprobs"]``.

How the mask is computed (``MaskPolicyProcessor``, a transformers ``LogitsProcessor``):

- When π_mask's weights equal the learner's (the iterations that start with a refresh,
  and iteration 1) the nucleus is taken from the logits generation already computed; the
  mask model is not run at all.
- Otherwise the mask model runs alongside generation with its own KV cache: the first
  call feeds the prompt (the encoder, for seq2seq), each later call only the token just
  sampled. That is one incremental, whole-batch step per generated token, the same cost
  structure as generation itself, for causal and encoder-decoder models alike.

The processor also records the masked log-prob of each sampled token (the behaviour
policy's, from generation's own logits) and the boolean action mask ``[B, G, V]``, so
neither needs another forward pass. Tokens an earlier processor made impossible (EOS
under ``min_new_tokens``) are left out of the nucleus and of the action mask.

Evaluation samples from the unmasked learner: the mask shapes exploration during training.
Logged besides PPO's metrics (``entropy`` and ``kl`` are the unmasked learner's):
``nlpo/mask_size`` (allowed tokens per step), ``nlpo/allowed_mass`` (πθ's own probability of
the allowed set, the share of the learner that the mask keeps) and ``nlpo/mask_refreshed``.

Resume is exact: the refresh schedule depends only on the iteration number (refresh at the
start of iteration i when i > 1 and (i − 1) % μ == 0), and each checkpoint folder also holds
the mask policy's weights as ``mask_policy.safetensors``.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    EncoderDecoderCache,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
)

from lmgym.algos.advantages import masked_mean
from lmgym.algos.onpolicy import OnPolicyTrainer, PolicyTerms
from lmgym.algos.ppo import ppo_policy_loss
from lmgym.data.sample import Sample
from lmgym.errors import InputError, StateError
from lmgym.models.trunk import capture_block_input, copy_above, frozen_depth, load_above
from lmgym.rollout.rollout import Rollout, collect_rollout
from lmgym.rollout.sampling import tokenize_prompts

MASK_FILE = "mask_policy.safetensors"


def top_p_mask(
    logits: torch.Tensor,
    top_p: float,
    min_tokens_to_keep: int = 1,
    always_allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The nucleus of softmax(logits) as a bool mask of the same shape ``[..., V]``.

    Keeps the most likely tokens until their probability reaches ``top_p`` (a token is
    kept when the mass of the tokens ranked before it is still < ``top_p``), at least
    ``min_tokens_to_keep`` of them, and every id in ``always_allowed``.
    """
    probs = logits.float().softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., :min_tokens_to_keep] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if always_allowed is not None and always_allowed.numel():
        keep[..., always_allowed] = True
    return keep


def masked_log_softmax(logits: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """log π̃: the log-softmax over the allowed tokens only (−inf elsewhere); both ``[..., V]``."""
    return F.log_softmax(logits.float().masked_fill(~action_mask, float("-inf")), dim=-1)


def masked_entropy(logprobs: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """H[π̃] from ``masked_log_softmax``'s output (0·log 0 taken as 0, so no NaN)."""
    return -(logprobs.exp() * logprobs.masked_fill(~action_mask, 0.0)).sum(-1)


class MaskPolicyProcessor(LogitsProcessor):
    """Restricts sampling to the mask policy's nucleus; records masks and masked log-probs.

    One instance per rollout. ``mask_model=None`` means "π_mask has the learner's weights":
    the nucleus is then taken from the scores generation passes in. Otherwise the mask model
    is stepped incrementally with its own KV cache (see the module docstring).
    """

    def __init__(
        self,
        mask_model: PreTrainedModel | None,
        is_seq2seq: bool,
        prompt_ids: torch.Tensor,  # [B, P] exactly as generation gets them
        prompt_mask: torch.Tensor,  # [B, P]
        top_p: float,
        min_tokens_to_keep: int,
        always_allowed: torch.Tensor,  # [S] token ids never masked
        temperature: float,
        trunk_states: list[torch.Tensor] | None = None,
    ) -> None:
        self.mask_model = mask_model
        # With a frozen trunk: the learner's hidden states entering the first trainable block, one entry per
        # forward call of generation (the prompt, then each new token); the mask model is then `copy_above`.
        self.trunk_states = trunk_states
        self.is_seq2seq = is_seq2seq
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.top_p, self.min_tokens_to_keep = top_p, min_tokens_to_keep
        self.always_allowed = always_allowed
        self.temperature = temperature
        self.action_masks: list[torch.Tensor] = []  # per step [B, V] bool
        self.logprobs: list[torch.Tensor] = []  # per step [B]: log π̃(sampled token)
        self._pending: torch.Tensor | None = None  # [B, V] log π̃ of the last step, until its token is known
        self._cache: DynamicCache | EncoderDecoderCache | None = None
        self._attention_mask: torch.Tensor | None = None
        self._encoder_outputs: Any = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._pending is not None:  # the previous step's token is now the last one of input_ids
            self.logprobs.append(self._pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        sampleable = torch.isfinite(scores)  # [B, V]; earlier processors may have ruled tokens out
        mask_logits = scores if self.mask_model is None else self._mask_model_logits(input_ids)
        mask_logits = mask_logits.float().masked_fill(~sampleable, float("-inf"))
        allowed = top_p_mask(
            mask_logits / self.temperature, self.top_p, self.min_tokens_to_keep, self.always_allowed.to(scores.device)
        )
        allowed &= sampleable
        self.action_masks.append(allowed)
        self._pending = masked_log_softmax(scores / self.temperature, allowed)
        return scores.masked_fill(~allowed, float("-inf"))

    def _mask_model_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """π_mask's next-token logits [B, V], feeding only what is new since the last call."""
        model = self.mask_model
        first = self._cache is None
        if self.is_seq2seq:
            if first:
                self._cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
                self._encoder_outputs = model.get_encoder()(input_ids=self.prompt_ids, attention_mask=self.prompt_mask)
            out = model(
                encoder_outputs=self._encoder_outputs,
                attention_mask=self.prompt_mask,
                decoder_input_ids=input_ids[:, -1:],  # the decoder start token on the first call
                cache=self._cache,
                use_cache=True,
            )
            return out.logits[:, -1]
        if first:
            if input_ids.shape != self.prompt_ids.shape or not torch.equal(input_ids, self.prompt_ids):
                raise InputError("MaskPolicyProcessor: generation's prompt differs from the one it was built with")
            self._cache = DynamicCache(config=model.config)
            self._attention_mask = self.prompt_mask
            new_ids = input_ids  # the whole (left-padded) prompt
        else:
            ones = self._attention_mask.new_ones(input_ids.shape[0], 1)
            self._attention_mask = torch.cat([self._attention_mask, ones], dim=1)  # as generate grows its mask
            new_ids = input_ids[:, -1:]
        # Left padding shifts positions; derive them from the mask as generate does.
        position_ids = (self._attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -new_ids.shape[1] :]
        kwargs = {"logits_to_keep": 1} if getattr(model, "_supports_logits_to_keep", lambda: False)() else {}
        if self.trunk_states is not None:  # start above the frozen trunk, from the states generation computed
            states = self.trunk_states[-1]
            if states.shape[:2] != new_ids.shape:
                raise StateError(
                    f"trunk states {tuple(states.shape)} do not match the new tokens {tuple(new_ids.shape)}"
                )
            kwargs["inputs_embeds"] = states
        else:
            kwargs["input_ids"] = new_ids
        out = model(
            attention_mask=self._attention_mask,
            position_ids=position_ids,
            cache=self._cache,
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -1]

    def finish(self, gen_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """After generation: masked log-probs of ``gen_ids`` [B, G] and the action masks [B, G, V]."""
        G = gen_ids.shape[1]
        if len(self.action_masks) != G or self._pending is None:
            raise StateError(f"MaskPolicyProcessor saw {len(self.action_masks)} steps for {G} generated tokens")
        logprobs = [*self.logprobs, self._pending.gather(-1, gen_ids[:, -1:]).squeeze(-1)]
        self._cache = self._encoder_outputs = self._pending = None  # free the mask model's KV cache
        return torch.stack(logprobs, dim=1), torch.stack(self.action_masks, dim=1)


class NLPOTrainer(OnPolicyTrainer):
    """PPO on the masked policy π̃θ, with a mask policy refreshed every ``mask_update_every`` iterations."""

    def build_extras(self) -> None:
        super().build_extras()
        cfg = self.algo_config
        # With frozen bottom blocks π_mask differs from πθ only above them: it is a copy of the top (sharing the
        # frozen embedding and head) run on the hidden states generation computes anyway. Otherwise (every block
        # trains, encoder-decoders, sharded weights) a whole copy, run on the tokens.
        reuse = self.config.rollout.reuse_frozen_trunk and not self.dist.sharded and not self.policy.is_seq2seq
        self.trunk_depth = frozen_depth(self.policy.model) if reuse else 0
        if self.trunk_depth:
            self.mask_model = copy_above(self.policy.model, self.trunk_depth)
        else:
            self.mask_model = copy.deepcopy(self.policy.model).eval().requires_grad_(False)
        # True while π_mask's weights equal the learner's: the rollout then skips the mask model.
        self.mask_is_learner = True
        self.always_allowed = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
        self.mask_top_p, self.mask_update_every = cfg.mask_top_p, cfg.mask_update_every

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {MASK_FILE: self.mask_model}  # π_mask as of its last refresh, committed with the policy

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        self.mask_is_learner = False

    # --- the mask policy ---------------------------------------------------------------------------

    def refreshes_at(self, iteration: int) -> bool:
        """π_mask ← πθ at the start of iterations 1 + μ, 1 + 2μ, ... (a function of the iteration only)."""
        return iteration > 1 and (iteration - 1) % self.mask_update_every == 0

    def refresh_mask_policy(self) -> None:
        # With sharded weights (FSDP) π_mask stays a whole copy on every rank: it runs inside generation's
        # logits processor, which a rank that has finished its batch skips, so it must not need collectives.
        if self.trunk_depth:
            load_above(self.mask_model, self.policy.model, self.trunk_depth)
        else:
            self.mask_model.load_state_dict(self.dist.full_state_dict(self.policy.model, every_rank=True))
        self.mask_is_learner = True

    def prepare_iteration(self, iteration: int) -> None:
        if self.refreshes_at(iteration):
            self.changing_state()  # the mask policy is checkpointed state: the guards keep it first
            self.refresh_mask_policy()

    def step(self, iteration: int) -> dict[str, Any]:
        record = super().step(iteration)
        record["nlpo/mask_refreshed"] = float(self.refreshes_at(iteration))
        return record

    # --- rollout: sample from π̃θ ----------------------------------------------------------------

    def rollout(self, samples: list[Sample]) -> Rollout:
        max_prompt_tokens = self.config.model.max_prompt_tokens
        # The same call collect_rollout makes; the processor needs the prompt mask for its own forward.
        prompt_ids, prompt_mask, _ = tokenize_prompts(self.tokenizer, [s.prompt for s in samples], max_prompt_tokens)
        prompt_ids, prompt_mask = prompt_ids.to(self.policy.device), prompt_mask.to(self.policy.device)  # as generate
        run_mask = not self.mask_is_learner
        with ExitStack() as stack:
            states = None
            if run_mask and self.trunk_depth:
                states = stack.enter_context(capture_block_input(self.policy.model, self.trunk_depth))
            processor = MaskPolicyProcessor(
                self.mask_model if run_mask else None,
                self.policy.is_seq2seq,
                prompt_ids,
                prompt_mask,
                self.mask_top_p,
                self.algo_config.min_tokens_to_keep,
                self.always_allowed,
                self.temperature,
                states,
            )
            rollout = collect_rollout(
                self.policy,
                self.reference,
                self.reward,
                samples,
                self.generation,
                max_prompt_tokens,
                temperature=self.temperature,
                logits_processor=LogitsProcessorList([processor]),
                reuse_generation_scores=self.config.rollout.reuse_generation_scores,
                keep_trunk=self.config.rollout.reuse_frozen_trunk and not self.dist.sharded,
                share_prefill=False,  # the processor follows generation's own forward calls, one per step
            )
        masked_logprobs, action_mask = processor.finish(rollout.batch.gen_ids)  # [B, G], [B, G, V]
        valid = rollout.mask.bool()
        masked_logprobs = torch.where(valid, masked_logprobs, 0.0)  # log π̃_old; 0 past EOS, as rollout.logprobs
        rollout.extras["masked_logprobs"] = masked_logprobs
        rollout.extras["action_mask"] = action_mask
        rollout.extras["mask_size"] = float(masked_mean(action_mask.sum(-1).float(), valid))
        # πθ(A_t): the learner's own probability of the allowed set (log of it: unmasked − masked log-prob).
        rollout.extras["allowed_mass"] = float(masked_mean(torch.exp(rollout.logprobs - masked_logprobs), valid))
        return rollout

    # --- update: PPO on π̃θ ------------------------------------------------------------------------

    def score_minibatch(
        self, rollout: Rollout, idx: torch.Tensor, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """log π̃θ(a_t|s_t) [b, G], H[π̃θ] [b, G] (or None) and V(s_t) [b, G] for the samples ``idx``."""
        batch = rollout.batch.index(idx)
        scores = self.policy.score(batch, self.temperature, with_values=True, with_entropy=False, keep_logits=True)
        action_mask = rollout.extras["action_mask"][idx]  # [b, G, V]
        logp = masked_log_softmax(scores.logits, action_mask)  # [b, G, V]
        logprobs = logp.gather(-1, batch.gen_ids.unsqueeze(-1)).squeeze(-1)
        logprobs = torch.where(batch.gen_mask.bool(), logprobs, 0.0)  # no −inf past EOS
        entropy = masked_entropy(logp, action_mask) if with_entropy else None
        return logprobs, entropy, scores.values

    def old_logprobs(self, rollout: Rollout) -> torch.Tensor:
        return rollout.extras["masked_logprobs"]  # log π̃_old, [B, G]

    def policy_loss(self, terms: PolicyTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's clipped objective on π̃θ (`score_minibatch` and `old_logprobs` give the masked log-probs)."""
        return ppo_policy_loss(
            terms.logprobs, terms.old_logprobs, terms.advantages, terms.mask, self.algo_config.clip_range
        )

    def update(self, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        stats = super().update(rollout, advantages, returns)
        self.mask_is_learner = False  # the learner has moved on
        stats["nlpo/mask_size"] = rollout.extras["mask_size"]
        stats["nlpo/allowed_mass"] = rollout.extras["allowed_mass"]
        return stats
