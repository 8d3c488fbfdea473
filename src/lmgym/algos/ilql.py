"""Implicit Language Q-Learning (Snell et al., 2022): offline RL from logged text and its rewards.

The LM gets a value head V(s) and two Q heads Q₁, Q₂(s, ·) over the vocabulary, each with a target
copy Q̂ᵢ updated by Polyak averaging (Q̂ ← (1−α)·Q̂ + α·Q every ``target_update_every`` steps). On a
logged completion with per-token rewards r_t (a sequence reward sits on its last token), per token:

    L_Q    = Σᵢ (Qᵢ(s_t, a_t) − [r_t + γ·V(s_{t+1})])²            V(s_{t+1}) not differentiated; 0 after the end
    L_V    = |τ − 1(u < 0)|·u²,  u = minᵢ Q̂ᵢ(s_t, a_t) − V(s_t)  (expectile regression, τ > ½: an upper expectile)
    L_CQL  = Σᵢ [log Σ_a exp Qᵢ(s_t, a) − Qᵢ(s_t, a_t)]           (pushes down Q of tokens the data never took)
    L_AWAC = w_t · (−log πθ(a_t | s_t)),  w_t = min(exp(β_awac·(minᵢ Q̂ᵢ − V)), w_max)  (w_t = 1 when β_awac = 0)
    loss   = L_Q + L_V + cql_coef·L_CQL + awac_coef·L_AWAC          (means over the completion tokens)

Decoding adds β·(minᵢ Q̂ᵢ(s, a) − V(s)) to the policy's logits at every step (`ILQLPolicy.generate`), so
evaluation with the shared `evaluate()` scores the ILQL policy. Heads sit on the LM's final hidden
states (the decoder's for encoder-decoders). A Q head maps a state to a vector in the embedding space
and scores every token against the frozen output embedding (Q(s, ·) = E·f(s) + b): a vocabulary-sized
linear layer per head (four of them with the targets) would outweigh a small LM.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from lmgym.algos.advantages import masked_mean
from lmgym.algos.offline import OfflineTrainer, completion_ids
from lmgym.config import ILQLConfig
from lmgym.data.preferences import ScoredText, load_scored_texts
from lmgym.errors import InputError, MissingFileError
from lmgym.models.policy import Policy, forward_generated, head_inputs, logprobs_from_logits

TARGET_FILE = "ilql_target_heads.safetensors"
HEADS_FILE = "ilql_heads.safetensors"


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """|τ − 1(u < 0)|·u² elementwise, for u = ``diff`` (target − prediction)."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff**2


class QHead(nn.Module):
    """Q(s, ·) = E·f(s) + b with a small MLP f and the LM's output embedding E (not trained here)."""

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))
        self.bias = nn.Parameter(torch.zeros(vocab))
        # Zero output: Q ≡ 0 at first, so decoding starts as the behaviour policy.
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., V]
        return F.linear(self.mlp(hidden), embedding.detach(), self.bias)


class ILQLHeads(nn.Module):
    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, 1))
        nn.init.zeros_(self.v[-1].weight)
        nn.init.zeros_(self.v[-1].bias)
        self.q = nn.ModuleList([QHead(hidden, vocab), QHead(hidden, vocab)])

    def values(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., H] -> [...]
        return self.v(hidden).squeeze(-1)

    def qs(self, hidden: torch.Tensor, embedding: torch.Tensor) -> list[torch.Tensor]:  # each [..., V]
        return [head(hidden, embedding) for head in self.q]


class AdvantageProcessor(LogitsProcessor):
    """Adds β·(min Q̂(s, ·) − V(s)) to the next-token scores, s read from the LM head's input."""

    def __init__(self, policy: ILQLPolicy, captured: list[torch.Tensor]) -> None:
        self.policy = policy
        self.captured = captured

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hidden = self.captured[-1][:, -1].float()  # [B, H]: the state whose logits are being sampled
        self.captured.clear()
        return scores + self.policy.beta * self.policy.advantages(hidden).to(scores.dtype)


class ILQLPolicy(Policy):
    """The LM, its ILQL heads and target Q heads; `generate` decodes with the advantage-shifted logits."""

    def __init__(self, model, tokenizer, is_seq2seq: bool, beta: float) -> None:
        super().__init__(model, tokenizer, is_seq2seq, value_head="none")
        hidden = model.get_output_embeddings().weight.shape[1]
        vocab = model.get_output_embeddings().weight.shape[0]
        self.heads = ILQLHeads(hidden, vocab)
        self.target_q = copy.deepcopy(self.heads.q).requires_grad_(False)
        self.beta = beta

    @property
    def embedding(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    @torch.no_grad()
    def advantages(self, hidden: torch.Tensor) -> torch.Tensor:
        """min Q̂(s, ·) − V(s) for states ``hidden`` [B, H] -> [B, V]."""
        q = torch.minimum(*[head(hidden, self.embedding) for head in self.target_q])
        return q - self.heads.values(hidden).unsqueeze(-1)

    @torch.no_grad()
    def polyak(self, rate: float) -> None:
        for target, online in zip(self.target_q.parameters(), self.heads.q.parameters(), strict=True):
            target.lerp_(online, rate)

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, generation, logits_processor=None):
        if self.beta == 0:
            return super().generate(prompt_ids, prompt_mask, generation, logits_processor)
        with head_inputs(self.model) as captured:
            processors = LogitsProcessorList([AdvantageProcessor(self, captured), *(logits_processor or [])])
            return super().generate(prompt_ids, prompt_mask, generation, processors)


@dataclass(frozen=True)
class Transition:
    """A logged completion: its exact tokens and one reward per token."""

    id: str
    prompt: str
    completion_ids: list[int]
    rewards: list[float]


def transitions_from(scored: list[ScoredText], tokenizer, max_tokens: int, source: str) -> list[Transition]:
    """Token ids and per-token rewards (a sequence reward on the last kept token; token rewards past the
    ``max_tokens`` cut are dropped with the tokens they belong to)."""
    retokenized = completion_ids(tokenizer, [s.completion for s in scored])
    out = []
    for s, fallback in zip(scored, retokenized, strict=True):
        ids = list(s.completion_ids) if s.completion_ids is not None else fallback
        if s.token_rewards is not None:
            if len(s.token_rewards) != len(ids):
                raise InputError(
                    f"{source}, example {s.id!r}: {len(s.token_rewards)} token_rewards for {len(ids)} completion "
                    "tokens (the completion's tokens plus EOS under the policy's tokenizer); give 'completion_ids' "
                    "with them"
                )
            rewards = list(s.token_rewards[:max_tokens])
        else:
            rewards = [0.0] * min(len(ids), max_tokens)
            rewards[-1] = float(s.reward or 0.0)
        out.append(Transition(s.id, s.prompt, ids[:max_tokens], rewards))
    return out


class ILQLTrainer(OfflineTrainer):
    algo_config: ILQLConfig
    policy: ILQLPolicy
    supports_sharding = False  # its Q heads score through the (then sharded) output embedding

    def build_extras(self) -> None:
        policy = ILQLPolicy(self.policy.model, self.tokenizer, self.policy.is_seq2seq, self.algo_config.beta)
        self.policy = policy.to(self.dist.device)  # its heads are made on the CPU

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {TARGET_FILE: self.policy.target_q}

    def make_examples(self) -> list[Transition]:
        cfg = self.algo_config
        if cfg.data == "logged":
            scored, source = self.logged_generations(), "logged data"
        elif Path(cfg.data).expanduser().exists():
            scored, source = load_scored_texts(cfg.data), cfg.data
        else:
            raise MissingFileError(f"ilql.data: {cfg.data!r} is neither 'logged' nor an existing JSONL file")
        return transitions_from(scored, self.tokenizer, cfg.max_completion_tokens, source)

    def loss_units(self, examples: list[Transition]) -> float:
        return self.completion_tokens([e.completion_ids for e in examples])  # its terms are token means

    def loss(self, examples: list[Transition]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.algo_config
        policy = self.policy
        batch = self.batch([e.prompt for e in examples], [e.completion_ids for e in examples])
        mask = batch.gen_mask.float()  # [B, G]
        rewards = torch.zeros_like(mask)
        for i, e in enumerate(examples):
            rewards[i, : len(e.rewards)] = torch.tensor(e.rewards)
        logits, hidden = forward_generated(policy.model, policy.is_seq2seq, batch)  # [B, G, V], [B, G, H]
        hidden = hidden.float()
        actions = batch.gen_ids.unsqueeze(-1)  # [B, G, 1]
        qs = policy.heads.qs(hidden, policy.embedding)  # each [B, G, V]
        q_taken = [q.gather(-1, actions).squeeze(-1) for q in qs]  # each [B, G]
        values = policy.heads.values(hidden)  # [B, G]: V(s_t)
        with torch.no_grad():
            target_q = torch.minimum(*[head(hidden, policy.embedding).gather(-1, actions).squeeze(-1)
                                       for head in policy.target_q])  # fmt: skip
            # V(s_{t+1}); the state after the last token is terminal (EOS or the horizon): V = 0 there.
            next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * mask.roll(-1, 1)
            next_values[:, -1] = 0.0
            q_target = rewards + cfg.gamma * next_values
        loss_q = sum(masked_mean((q - q_target) ** 2, mask) for q in q_taken)
        loss_v = masked_mean(expectile_loss(target_q - values, cfg.tau), mask)
        # Cross-entropy of Q as logits: logsumexp_a Q(s, a) − Q(s, a_t).
        loss_cql = sum(masked_mean(F.cross_entropy(q.transpose(1, 2), batch.gen_ids, reduction="none"), mask)
                       for q in qs)  # fmt: skip
        nll = -logprobs_from_logits(logits.float(), batch.gen_ids)  # [B, G]
        if cfg.awac_beta > 0:
            with torch.no_grad():
                weights = torch.exp(cfg.awac_beta * (target_q - values)).clamp(max=cfg.awac_max_weight)
        else:
            weights = torch.ones_like(nll)
        loss_awac = masked_mean(weights * nll, mask)
        loss = loss_q + loss_v + cfg.cql_coef * loss_cql + cfg.awac_coef * loss_awac
        return loss, {
            "loss/q": loss_q,
            "loss/v": loss_v,
            "loss/cql": loss_cql,
            "loss/awac": loss_awac,
            "q_mean": masked_mean(q_taken[0], mask).detach(),
            "v_mean": masked_mean(values, mask).detach(),
        }

    def after_optimizer_step(self, iteration: int) -> None:
        cfg = self.algo_config
        if iteration % cfg.target_update_every == 0:
            self.policy.polyak(cfg.target_update_rate)

    def save_final(self, model_state: dict[str, torch.Tensor] | None = None) -> None:
        super().save_final(model_state)
        save_model(self.policy.heads, str(self.run.final / HEADS_FILE))
        save_model(self.policy.target_q, str(self.run.final / TARGET_FILE))

    def status_legend(self) -> str:
        return "loss, mean Q of taken tokens, mean V (per gradient step)"

    def status(self, record: dict[str, object]) -> str:
        return f"loss {record['loss/total']:.4f}  Q {record['q_mean']:+.3f}  V {record['v_mean']:+.3f}"
