"""Supervised fine-tuning: maximise the log-likelihood of target completions given their prompts.

    L_SFT = − (1/N) Σ_tokens log πθ(y_t | x, y_<t)       (completion tokens only, EOS included)

Data: ``sft.data: references`` (one example per reference of each train prompt of the task),
``logged-best`` (the best of K samples of the initial policy by the reward: best-of-K distillation, a
warm start for tasks without references) or a JSONL of ``{prompt, completion}`` rows. The run's
``final/`` folder is a plain Hugging Face checkpoint, so ``model.name=<run>/final`` starts a PPO run
(or any other) from it: the usual warm start of RLHF. `sequence_nll` is also PPO-ptx's pretraining-mix term.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmgym.algos.advantages import masked_mean
from lmgym.algos.offline import OfflineTrainer, batch_to, completion_ids, make_batch
from lmgym.data.preferences import (
    Demonstration,
    ScoredText,
    demonstrations_from_references,
    load_demonstrations,
    write_jsonl,
)
from lmgym.errors import MissingFileError
from lmgym.models.policy import Policy, TokenBatch


@dataclass(frozen=True)
class TokenizedDemo:
    id: str
    prompt: str
    completion_ids: list[int]


def load_demos(data: str, samples, tokenizer, field: str = "sft.data") -> list[TokenizedDemo]:
    """Demonstrations from ``data`` ('references' or a JSONL path), tokenized (completion + EOS)."""
    if data == "references":
        demos: list[Demonstration] = demonstrations_from_references(samples, source=f"{field}=references")
    else:
        if not Path(data).expanduser().exists():
            raise MissingFileError(f"{field}: {data!r} is neither 'references' nor an existing JSONL file")
        demos = load_demonstrations(data)
    ids = completion_ids(tokenizer, [d.completion for d in demos])
    return [TokenizedDemo(d.id, d.prompt, row) for d, row in zip(demos, ids, strict=True)]


def sequence_nll(policy: Policy, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood per completion token, and the share of tokens predicted exactly (argmax)."""
    scores = policy.score(batch, with_values=False, with_entropy=False, keep_logits=True)
    mask = batch.gen_mask.float()
    with torch.no_grad():
        accuracy = masked_mean((scores.logits.argmax(-1) == batch.gen_ids).float(), mask)
    return -masked_mean(scores.logprobs, mask), accuracy


class SFTTrainer(OfflineTrainer):
    def make_examples(self) -> list[TokenizedDemo]:
        if self.algo_config.data == "logged-best":
            return self.best_of_logged()
        return load_demos(self.algo_config.data, self.train_samples, self.tokenizer)

    def best_of_logged(self) -> list[TokenizedDemo]:
        """Each prompt's highest-reward logged completion (its exact tokens), also written as sft-data.jsonl
        (a {prompt, completion} file, e.g. for ppo.ptx_data)."""
        best: dict[str, ScoredText] = {}
        for s in self.logged_generations():
            if s.completion.strip() and (s.prompt not in best or s.total_reward > best[s.prompt].total_reward):
                best[s.prompt] = s
        chosen = list(best.values())
        if self.dist.is_main:
            write_jsonl(self.run.root / "sft-data.jsonl", [Demonstration(s.id, s.prompt, s.completion) for s in chosen])
        ids = completion_ids(self.tokenizer, [s.completion for s in chosen])
        return [
            TokenizedDemo(s.id, s.prompt, list(s.completion_ids) if s.completion_ids else row)
            for s, row in zip(chosen, ids, strict=True)
        ]

    def loss_units(self, examples: list[TokenizedDemo]) -> float:
        return self.completion_tokens([e.completion_ids for e in examples])  # the NLL is a token mean

    def loss(self, examples: list[TokenizedDemo]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = self.batch([e.prompt for e in examples], [e.completion_ids for e in examples])
        nll, accuracy = sequence_nll(self.policy, batch)
        return nll, {"loss/nll": nll, "token_accuracy": accuracy}


class PretrainingMix:
    """PPO-ptx's supervised term (InstructGPT): the mean token NLL of ``batch_size`` demonstrations drawn at
    random (from the global torch RNG, which the trainer seeds per iteration, so a resumed run draws the same)."""

    def __init__(self, data: str, samples, tokenizer, max_prompt_tokens: int, max_tokens: int, batch_size: int) -> None:
        self.demos = load_demos(data, samples, tokenizer, field="ppo.ptx_data")
        self.tokenizer = tokenizer
        self.max_prompt_tokens, self.max_tokens, self.batch_size = max_prompt_tokens, max_tokens, batch_size

    def nll(self, policy: Policy) -> torch.Tensor:
        picked = [self.demos[i] for i in torch.randint(len(self.demos), (self.batch_size,)).tolist()]
        batch = make_batch(
            self.tokenizer,
            [d.prompt for d in picked],
            [d.completion_ids for d in picked],
            self.max_prompt_tokens,
            self.max_tokens,
        )
        return sequence_nll(policy, batch_to(batch, policy.device))[0]
