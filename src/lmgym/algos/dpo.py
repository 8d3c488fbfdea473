"""Direct Preference Optimization (Rafailov et al., 2023), with its IPO and conservative variants.

For a prompt x with a preferred completion y_w and a dispreferred one y_l, the implicit reward of a
completion is β·log(πθ(y|x) / π_ref(y|x)) (sequence log-probs: sums over the completion's tokens), and

    h      = β·[(log πθ(y_w) − log π_ref(y_w)) − (log πθ(y_l) − log π_ref(y_l))]
    DPO    L = −log σ(h)
    cDPO   L = −(1−ε)·log σ(h) − ε·log σ(−h)          (labels flipped with probability ε)
    IPO    L = (h/β − 1/(2β))²                        (Azar et al., 2023: regress the log-ratio margin)

π_ref is the frozen initial model. Logged per step: the implicit rewards of chosen and rejected, their
margin and how often the chosen one's is higher (the implicit reward accuracy).

Data: ``dpo.data`` is a JSONL of comparisons (pairs, rankings or best-of-K choices, see
`lmgym.data.preferences`), or 'logged': completions of the train prompts sampled from the initial
policy and ordered by the task reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmgym.algos.offline import OfflineTrainer, completion_ids
from lmgym.config import DPOConfig
from lmgym.data.preferences import Comparison, comparisons_from_scored, load_comparisons
from lmgym.errors import InputError, MissingFileError


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str
    chosen_ids: list[int]
    rejected_ids: list[int]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean loss over pairs from sequence log-probs (each [n]), and the implicit-reward statistics."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = beta * (chosen_logratio - rejected_logratio)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(h)
    elif loss_type == "conservative":
        losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    elif loss_type == "ipo":
        losses = (h / beta - 1 / (2 * beta)) ** 2
    else:
        raise InputError(f"dpo.loss must be 'sigmoid', 'conservative' or 'ipo', got {loss_type!r}")
    with torch.no_grad():
        chosen_reward, rejected_reward = beta * chosen_logratio, beta * rejected_logratio
        stats = {
            "rewards/chosen": chosen_reward.mean(),
            "rewards/rejected": rejected_reward.mean(),
            "rewards/margin": (chosen_reward - rejected_reward).mean(),
            "rewards/accuracy": (chosen_reward > rejected_reward).float().mean(),
        }
    return losses.mean(), stats


def pairs_of(comparison: Comparison, which: str) -> list[tuple[int, int]]:
    """(better, worse) pairs of a comparison: 'all' it asserts, or 'best_worst' (best vs the worst of a
    ranking; best vs each other response of a best-of-K choice, where the rest are unordered)."""
    if which == "all" or not comparison.ranked:
        return comparison.pairs()
    return [(0, len(comparison.responses) - 1)]


class DPOTrainer(OfflineTrainer):
    algo_config: DPOConfig

    def make_examples(self) -> list[PreferencePair]:
        cfg = self.algo_config
        if cfg.data == "logged":
            comparisons = comparisons_from_scored(self.logged_generations(), mode="ranking")
            if not comparisons:
                raise InputError(
                    "dpo.data=logged: every prompt's logged completions got the same reward, so there is no "
                    "preference to learn; raise dpo.logged_per_prompt or give a JSONL of comparisons"
                )
        elif Path(cfg.data).expanduser().exists():
            comparisons = load_comparisons(cfg.data)
        else:
            raise MissingFileError(f"dpo.data: {cfg.data!r} is neither 'logged' nor an existing JSONL file")
        triples = [(c, i, j) for c in comparisons for i, j in pairs_of(c, cfg.pairs)]
        texts = sorted({c.responses[k] for c, i, j in triples for k in (i, j)})
        ids = dict(zip(texts, completion_ids(self.tokenizer, texts), strict=True))
        return [
            PreferencePair(f"{c.id}:{i}>{j}", c.prompt, ids[c.responses[i]], ids[c.responses[j]]) for c, i, j in triples
        ]

    def loss(self, examples: list[PreferencePair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.algo_config
        n = len(examples)
        # Chosen and rejected completions in one batch: one forward pass per model.
        batch = self.batch(
            [e.prompt for e in examples] * 2, [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
        )
        mask = batch.gen_mask.float()
        policy_logps = (self.policy.score(batch, with_values=False, with_entropy=False).logprobs * mask).sum(-1)
        ref_logps = (self.reference.logprobs(batch) * mask).sum(-1)
        loss, stats = dpo_loss(
            policy_logps[:n], policy_logps[n:], ref_logps[:n], ref_logps[n:], cfg.beta, cfg.loss, cfg.label_smoothing
        )
        return loss, stats

    def status_legend(self) -> str:
        return "loss, implicit reward margin and accuracy (per gradient step)"

    def status(self, record: dict[str, object]) -> str:
        return (
            f"loss {record['loss/total']:.4f}  margin {record['rewards/margin']:+.3f}  "
            f"acc {record['rewards/accuracy']:.2f}"
        )
