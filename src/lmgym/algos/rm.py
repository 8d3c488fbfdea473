"""Reward-model fitting: the Bradley–Terry losses on comparisons, the optimizer loop and pairwise accuracy.

A comparison orders K responses to one prompt (a pair is K = 2). With r = the reward model's score of
prompt + response (lmgym.models.reward_model), the Bradley–Terry model says P(y_i ≻ y_j) = σ(r_i − r_j),
and the losses are

    pairwise   L = −log σ(r_better − r_worse − m)                  every asserted pair its own element
    ranking    L = mean over the comparison's K-choose-2 pairs of the same term  (InstructGPT: the K
               responses of a prompt are scored together, one batch element per comparison)
    best_of_k  L = −log softmax(r_1, ..., r_K)[best]               (a best-of-K choice)

with a margin m = ``rm.margin`` plus the comparison's own margin (Llama 2). Pairwise accuracy, the
share of held-out asserted pairs the model orders correctly, is the quality measure. `lmgym rm train`
(lmgym.algos.rm_train) and RLHF's periodic refresh (lmgym.algos.rlhf) both fit with `RewardModelFit`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmgym.config import RewardModelConfig
from lmgym.data.preferences import Comparison
from lmgym.distributed import Distributed
from lmgym.errors import TrainingError
from lmgym.models.reward_model import RewardModel


def comparison_loss(rewards: torch.Tensor, comparison: Comparison, loss: str, margin: float) -> torch.Tensor:
    """The loss of one comparison from the rewards [K] of its responses (best first)."""
    if loss == "best_of_k":
        return -F.log_softmax(rewards, dim=0)[0]
    better, worse = zip(*comparison.pairs(), strict=True)
    diffs = rewards[list(better)] - rewards[list(worse)] - (margin + comparison.margin)
    return -F.logsigmoid(diffs).mean()


def pairwise_accuracy(model: RewardModel, comparisons: Sequence[Comparison], batch_size: int = 64) -> float:
    """Share of the asserted (better, worse) pairs of ``comparisons`` with r(better) > r(worse)."""
    prompts = [c.prompt for c in comparisons for _ in c.responses]
    responses = [r for c in comparisons for r in c.responses]
    rewards = model.score(prompts, responses, batch_size)
    correct = total = start = 0
    for c in comparisons:
        r = rewards[start : start + len(c.responses)]
        start += len(c.responses)
        for i, j in c.pairs():
            correct += r[i] > r[j]
            total += 1
    return correct / max(total, 1)


def as_pairs(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Every asserted pair of the comparisons as its own two-response comparison (loss=pairwise)."""
    return [
        Comparison(f"{c.id}:{i}>{j}", c.prompt, (c.responses[i], c.responses[j]), True, c.margin)
        for c in comparisons
        for i, j in c.pairs()
    ]


@dataclass
class RewardModelFit:
    """Fits a `RewardModel` to comparisons; also used to keep fine-tuning it during RLHF."""

    model: RewardModel
    config: RewardModelConfig
    # Several processes (`lmgym rm train` under torchrun / accelerate launch): each scores its share of every
    # batch and the gradients are averaged, so all replicas take the one-process step.
    dist: Distributed = field(default_factory=Distributed)

    def __post_init__(self) -> None:
        cfg = self.config
        head = list(self.model.head.parameters())
        trunk = [p for p in self.model.trunk.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": trunk, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}], weight_decay=cfg.weight_decay
        )

    def elements(self, comparisons: Sequence[Comparison]) -> list[Comparison]:
        """The batch elements: one per comparison, or one per asserted pair (loss=pairwise)."""
        return as_pairs(comparisons) if self.config.loss == "pairwise" else list(comparisons)

    def step(self, batch: Sequence[Comparison]) -> float:
        """One gradient step on a batch of comparisons (all responses scored in one forward pass)."""
        cfg = self.config
        self.model.train()
        batch = self.dist.shard(batch)  # equal shares: every comparison's loss weighs the same
        prompts = [c.prompt for c in batch for _ in c.responses]
        responses = [r for c in batch for r in c.responses]
        rewards = self.model(prompts, responses)
        losses, start = [], 0
        for c in batch:
            losses.append(comparison_loss(rewards[start : start + len(c.responses)], c, cfg.loss, cfg.margin))
            start += len(c.responses)
        loss = torch.stack(losses).mean()
        if self.dist.any(not bool(torch.isfinite(loss))):  # every process stops, not only the one that saw it
            where = f"on comparisons {[c.id for c in batch][:5]}" if not torch.isfinite(loss) else "in another process"
            raise TrainingError(f"reward model loss is {float(loss)} {where}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(p for p in self.model.parameters() if p.requires_grad)
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.model.eval()
        return self.dist.mean_float(float(loss.detach()))

    def fit(self, comparisons: Sequence[Comparison], steps: int, seed: int, log=None) -> list[float]:
        """``steps`` gradient steps over seeded shuffles of ``comparisons``."""
        elements = self.elements(comparisons)
        rng = random.Random(seed)
        order: list[int] = []
        losses = []
        for step in range(1, steps + 1):
            if len(order) < self.config.batch_size:
                perm = list(range(len(elements)))
                rng.shuffle(perm)
                order += perm
            idx, order = order[: self.config.batch_size], order[self.config.batch_size :]
            losses.append(self.step([elements[i] for i in idx]))
            if log is not None:
                log(step, losses[-1])
        return losses

    @torch.no_grad()
    def normalize(self, comparisons: Sequence[Comparison]) -> None:
        """Set mean and std to those of the raw rewards of every response in ``comparisons``."""
        self.model.eval()
        prompts = [c.prompt for c in comparisons for _ in c.responses]
        responses = [r for c in comparisons for r in c.responses]
        raw = []
        for start in range(0, len(responses), 64):
            raw += self.model(prompts[start : start + 64], responses[start : start + 64]).tolist()
        values = torch.tensor(raw)
        self.model.mean.fill_(float(values.mean()))
        self.model.std.fill_(max(float(values.std()), 1e-6) if len(raw) > 1 else 1.0)
