"""ILQL: expectile loss by hand, decoding beats the behaviour data on a toy task, seq2seq, exact resume."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from lmgym.algos import get_trainer, ilql
from lmgym.algos.ilql import HEADS_FILE, expectile_loss
from lmgym.api import train
from lmgym.config import load_config
from lmgym.data.preferences import ScoredText, write_jsonl
from lmgym.data.registry import load_task
from lmgym.models.tiny import tiny_tokenizer


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_expectile_loss_by_hand() -> None:
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])  # u = target − prediction
    tau = 0.7
    expected = [0.7 * 4.0, 0.3 * 1.0, 0.7 * 0.25, 0.3 * 9.0]
    assert expectile_loss(diff, tau).tolist() == pytest.approx(expected)


def behaviour_data(path: Path) -> float:
    """Random 8-word completions of the toy prompts; per-token reward 1/12 for each " the" (the toy task's
    per-token reward). Returns the behaviour data's mean return."""
    tok = tiny_tokenizer()
    rng = random.Random(0)
    words = ["the", "movie", "film", "story", "night", "day"]
    prompts = load_task("toy").split("train")
    rows, total = [], 0.0
    for i in range(2 * len(prompts)):
        text = " " + " ".join(rng.choice(words) for _ in range(8))
        ids = [*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        rewards = tuple(1 / 12 if tok.decode([t]).strip() == "the" else 0.0 for t in ids)
        total += sum(rewards)
        rows.append(ScoredText(f"x{i}", prompts[i % len(prompts)].prompt, text, None, rewards, tuple(ids)))
    write_jsonl(path, rows)
    return total / len(rows)


def test_ilql_decodes_better_than_the_behaviour_data(tmp_path: Path) -> None:
    behaviour = behaviour_data(tmp_path / "logged.jsonl")
    config = load_config(
        None,
        ["task=toy", "task_args.per_token=true", "model=tiny", "algo=ilql", "iterations=150", "ilql.lr=1e-3",
         f"ilql.data={tmp_path / 'logged.jsonl'}", "ilql.beta=16", "model.freeze_embeddings=false", "threads=1",
         "eval.num_prompts=32", f"run_dir={tmp_path}", "name=ilql"],
    )  # fmt: skip
    trainer = get_trainer("ilql")(config, console=quiet())
    result = trainer.train()
    assert result.after["reward"] > behaviour + 0.08  # ~0.29 vs 0.11: Q − V steers decoding toward " the"
    # The same weights decoded without the advantage term (β = 0: the AWAC-trained LM alone) do worse.
    trainer.policy.beta = 0.0
    cloned, _ = trainer.evaluate(config.iterations)
    assert result.after["reward"] > cloned["reward"] + 0.08
    heads = load_file(str(result.run_dir / "final" / HEADS_FILE))
    assert any(k.startswith("q.") for k in heads) and any(k.startswith("v.") for k in heads)


def test_ilql_seq2seq_and_exact_resume(tmp_path: Path) -> None:
    common = ["task=toy", "model=tiny-seq2seq", "algo=ilql", "ilql.logged_prompts=8", "ilql.logged_per_prompt=2",
              "ilql.batch_size=4", "ilql.target_update_every=2", "threads=1", "eval.num_prompts=4",
              f"run_dir={tmp_path}", "checkpoint.every=2"]  # fmt: skip
    full = train(None, [*common, "iterations=4", "name=full"], console=quiet())
    train(None, [*common, "iterations=2", "name=cut"], console=quiet())
    resumed = train(None, [*common, "iterations=4", "name=cut"], resume=True, console=quiet())
    assert (tmp_path / "cut" / "data.jsonl").read_text() == (tmp_path / "full" / "data.jsonl").read_text()

    def train_lines(run: Path) -> list[dict]:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "examples_per_s"))}
                for r in lines if r["kind"] == "train"]  # fmt: skip

    assert train_lines(resumed.run_dir) == train_lines(full.run_dir)
    a, b = (load_file(str(r.run_dir / "final" / HEADS_FILE)) for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.after == full.after


# --- the loss terms by hand ---------------------------------------------------------------------------------------
# Two logged completions of different lengths (so the batch has padding) with hand-set per-token rewards.
ILQL_TEXTS = [" the movie", " a"]
ILQL_IDS = [[275, 442, 1], [260, 1]]  # their tiny-tokenizer ids, then EOS (1)
ILQL_REWARDS = [[0.5, -1.0, 2.0], [0.25, -0.5]]
GAMMA, TAU, CQL, AWAC, AWAC_BETA, AWAC_MAX = 0.9, 0.7, 0.3, 0.5, 1.0, 1.5


class FixedHeads(nn.Module):
    """Stands in for `ILQLHeads`: V and the two Q heads return preset tensors whatever the hidden states."""

    def __init__(self, values: torch.Tensor, qs: list[torch.Tensor]) -> None:
        super().__init__()
        self.fixed_values, self.fixed_qs = values, qs

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fixed_values

    def qs(self, hidden: torch.Tensor, embedding: torch.Tensor) -> list[torch.Tensor]:
        return self.fixed_qs


class FixedQ(nn.Module):
    """Stands in for one target Q head."""

    def __init__(self, q: torch.Tensor) -> None:
        super().__init__()
        self.q = q

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.q


def ilql_trainer(tmp_path: Path, *extra: str):
    rows = [
        ScoredText(f"x{i}", "the film was", text, None, tuple(r), tuple(ids))
        for i, (text, ids, r) in enumerate(zip(ILQL_TEXTS, ILQL_IDS, ILQL_REWARDS, strict=True))
    ]
    write_jsonl(tmp_path / "scored.jsonl", rows)
    config = load_config(
        None,
        ["task=toy", "model=tiny", "algo=ilql", f"ilql.data={tmp_path / 'scored.jsonl'}", f"ilql.gamma={GAMMA}",
         f"ilql.tau={TAU}", f"ilql.cql_coef={CQL}", f"ilql.awac_coef={AWAC}", f"ilql.awac_beta={AWAC_BETA}",
         f"ilql.awac_max_weight={AWAC_MAX}", "threads=1", f"run_dir={tmp_path}", "name=ilql", *extra],
    )  # fmt: skip
    return get_trainer("ilql")(config, console=quiet())


def test_ilql_loss_terms_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = ilql_trainer(tmp_path)
    assert [e.rewards for e in trainer.examples] == ILQL_REWARDS
    vocab = trainer.policy.embedding.shape[0]
    B, G = 2, 3
    gen = torch.Generator().manual_seed(0)
    # Hand-set outputs at every position, padding included (a value leaking from a padded position shows).
    device = trainer.policy.device  # drawn on the CPU (the same numbers everywhere), used where the model is
    logits = torch.randn(B, G, vocab, generator=gen).to(device)
    values = 2 * torch.randn(B, G, generator=gen).to(device)
    qs = [torch.randn(B, G, vocab, generator=gen).to(device) for _ in range(2)]
    target_qs = [torch.randn(B, G, vocab, generator=gen).to(device) for _ in range(2)]
    hidden = torch.zeros(B, G, 4, device=device)
    monkeypatch.setattr(ilql, "forward_generated", lambda model, is_seq2seq, batch: (logits, hidden))
    trainer.policy.heads = FixedHeads(values, qs)
    trainer.policy.target_q = nn.ModuleList([FixedQ(q) for q in target_qs])

    # Per token, from the definitions, with plain Python loops over the real (unpadded) tokens.
    q_err, v_terms, cql_terms, awac_terms, us, weights = [], [], [], [], [], []
    for i, (ids, rewards) in enumerate(zip(ILQL_IDS, ILQL_REWARDS, strict=True)):
        for t, a in enumerate(ids):
            next_v = float(values[i, t + 1]) if t + 1 < len(ids) else 0.0  # V = 0 after the last token
            target = rewards[t] + GAMMA * next_v
            q_err.append(sum((float(q[i, t, a]) - target) ** 2 for q in qs))
            u = min(float(q[i, t, a]) for q in target_qs) - float(values[i, t])
            us.append(u)
            v_terms.append((TAU if u >= 0 else 1 - TAU) * u**2)
            cql_terms.append(sum(math.log(float(torch.exp(q[i, t]).sum())) - float(q[i, t, a]) for q in qs))
            nll = math.log(float(torch.exp(logits[i, t]).sum())) - float(logits[i, t, a])
            weights.append(min(math.exp(AWAC_BETA * u), AWAC_MAX))
            awac_terms.append(weights[-1] * nll)
    n = len(us)  # 5 tokens
    # The data exercise both sides of the expectile and of the AWAC cap.
    assert any(u < 0 for u in us) and any(u > 0 for u in us)
    assert any(w == AWAC_MAX for w in weights) and any(w < AWAC_MAX for w in weights)
    expected = {
        "loss/q": sum(q_err) / n,
        "loss/v": sum(v_terms) / n,
        "loss/cql": sum(cql_terms) / n,
        "loss/awac": sum(awac_terms) / n,
    }
    with torch.no_grad():
        loss, stats = trainer.loss(trainer.examples)
    for key, value in expected.items():
        assert float(stats[key]) == pytest.approx(value, rel=1e-5), key
    total = expected["loss/q"] + expected["loss/v"] + CQL * expected["loss/cql"] + AWAC * expected["loss/awac"]
    assert float(loss) == pytest.approx(total, rel=1e-5)


def test_ilql_polyak_update_moves_the_target_a_fraction_alpha(tmp_path: Path) -> None:
    trainer = ilql_trainer(tmp_path, "ilql.target_update_rate=0.25", "ilql.target_update_every=2")
    policy = trainer.policy
    with torch.no_grad():
        for k, (target, online) in enumerate(zip(policy.target_q.parameters(), policy.heads.q.parameters(),
                                                 strict=True)):  # fmt: skip
            target.fill_(1.0 + k)
            online.fill_(-3.0 - k)
    trainer.after_optimizer_step(1)  # not a multiple of target_update_every: no update
    assert all(bool((p == 1.0 + k).all()) for k, p in enumerate(policy.target_q.parameters()))
    trainer.after_optimizer_step(2)  # target ← 0.75·target + 0.25·online
    for k, target in enumerate(policy.target_q.parameters()):
        assert torch.allclose(target, torch.full_like(target, 0.75 * (1.0 + k) + 0.25 * (-3.0 - k))), k
    # The online heads are untouched.
    assert all(bool((p == -3.0 - k).all()) for k, p in enumerate(policy.heads.q.parameters()))
