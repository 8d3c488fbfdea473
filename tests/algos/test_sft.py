"""SFT: the loss is the completion tokens' NLL, it imitates demonstrations, and its final model starts PPO."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lmgym.algos.offline import make_batch
from lmgym.algos.sft import sequence_nll
from lmgym.api import train
from lmgym.data.registry import load_task
from lmgym.data.tasks.files import DatasetError
from lmgym.models.loading import load_model
from lmgym.models.policy import Policy


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def demos_file(tmp_path: Path) -> Path:
    rows = [{"prompt": s.prompt, "completion": " the the the the the the"} for s in load_task("toy").split("train")]
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sequence_nll_counts_only_completion_tokens() -> None:
    loaded = load_model("tiny")
    policy = Policy(loaded.model, loaded.tokenizer, False, value_head="none")
    tok = loaded.tokenizer
    batch = make_batch(tok, ["a movie", "the film was"], [[5, 6, tok.eos_token_id], [7, tok.eos_token_id]], 16, 8)
    assert batch.gen_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    nll, _ = sequence_nll(policy, batch)
    # By hand: the full forward pass of each prompt + completion, log-softmax at the positions before each token.
    total, count = 0.0, 0
    for prompt, completion in (("a movie", [5, 6, tok.eos_token_id]), ("the film was", [7, tok.eos_token_id])):
        ids = tok(prompt)["input_ids"] + completion
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0], -1)
        for k, token in enumerate(completion):
            total -= float(logp[len(ids) - len(completion) + k - 1, token])
            count += 1
    assert math.isclose(float(nll.detach()), total / count, rel_tol=1e-4)


def test_sft_imitates_and_warm_starts_ppo(tmp_path: Path) -> None:
    data = demos_file(tmp_path)
    common = ["task=toy", "threads=1", f"run_dir={tmp_path}", "eval.num_prompts=16"]
    sft = train(
        None,
        [*common, "model=tiny", "algo=sft", "iterations=40", f"sft.data={data}", "sft.lr=3e-3",
         "model.freeze_embeddings=false", "name=sft"],
        console=quiet(),
    )  # fmt: skip
    records = [json.loads(line) for line in (sft.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/total"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.5 * losses[0]
    assert sft.after["reward"] > sft.before["reward"] + 0.4  # it now says "the" most of the time
    # model.name=<sft run>/final starts a PPO run from the fine-tuned weights: its first evaluation
    # (same prompts, same seed) is the SFT run's last one.
    ppo = train(None, [*common, f"model={sft.run_dir / 'final'}", "iterations=1", "name=ppo"], console=quiet())
    assert ppo.before["reward"] == pytest.approx(sft.after["reward"])


def test_sft_needs_references_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no sample has a reference.*sft\.data"):
        train(None, ["task=toy", "model=tiny", "algo=sft", f"run_dir={tmp_path}", "name=x"], console=quiet())
    with pytest.raises(FileNotFoundError, match=r"sft\.data"):
        train(
            None, ["task=toy", "model=tiny", "algo=sft", "sft.data=missing.jsonl", f"run_dir={tmp_path}", "name=y"],
            console=quiet(),
        )  # fmt: skip


def test_sft_on_the_best_of_its_own_samples(tmp_path: Path) -> None:
    result = train(
        None,
        ["task=toy", "model=tiny", "algo=sft", "iterations=2", "sft.data=logged-best", "sft.logged_prompts=8",
         "sft.logged_per_prompt=4", "threads=1", "eval.num_prompts=4", f"run_dir={tmp_path}", "name=best"],
        console=quiet(),
    )  # fmt: skip
    logged = [json.loads(line) for line in (result.run_dir / "data.jsonl").read_text().splitlines()]
    chosen = [json.loads(line) for line in (result.run_dir / "sft-data.jsonl").read_text().splitlines()]
    assert len(logged) == 32 and len(chosen) == 8
    for demo in chosen:
        rewards = [r["reward"] for r in logged if r["prompt"] == demo["prompt"]]
        mine = next(r["reward"] for r in logged if r["id"] == demo["id"])
        assert mine == max(rewards)
