"""Which end of an over-long prompt is cut: encoder inputs lose their end, causal prompts their beginning,
and a task or the config can choose."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.config import load_config
from lmgym.data.sample import Sample
from lmgym.data.task import Task
from lmgym.models.loading import load_tokenizer, set_truncation_side
from lmgym.rollout.sampling import tokenize_prompts

# A NarrativeQA-style prompt: the question first, then a summary far longer than the prompt budget.
QUESTION = "question: Why does the actor love the music?"
PROMPT = QUESTION + " context: " + " ".join(["the story of a man and a woman in the world"] * 30)
LIMIT = 24


def kept_text(tokenizer, prompt: str = PROMPT, limit: int = LIMIT) -> str:
    ids, mask, n_truncated = tokenize_prompts(tokenizer, [prompt], limit)
    assert n_truncated == 1 and int(mask.sum()) == limit
    return tokenizer.decode(ids[0][mask[0].bool()], skip_special_tokens=True)


def test_encoder_decoder_prompts_keep_their_instruction() -> None:
    kept = kept_text(load_tokenizer("tiny-seq2seq"))
    assert kept.startswith(QUESTION)


def test_causal_prompts_keep_the_text_they_continue() -> None:
    kept = kept_text(load_tokenizer("tiny"))
    assert "question" not in kept and PROMPT.endswith(kept.strip())


@pytest.mark.parametrize(
    ("configured", "task_side", "model", "expected"),
    [
        ("auto", None, "tiny", "left"),
        ("auto", None, "tiny-seq2seq", "right"),
        ("auto", "right", "tiny", "right"),  # the task knows its prompts start with the instruction
        ("left", "right", "tiny-seq2seq", "left"),  # the config wins over task and model
        ("right", None, "tiny", "right"),
    ],
)
def test_config_then_task_then_model_kind(configured: str, task_side: str | None, model: str, expected: str) -> None:
    tokenizer = load_tokenizer(model)
    set_truncation_side(tokenizer, configured, task_side)
    assert tokenizer.truncation_side == expected


def test_trainer_cuts_a_narrativeqa_style_prompt_at_its_end(tmp_path: Path) -> None:
    """A causal model on a task whose prompts start with the question: the rollout's prompt keeps it."""
    samples = [Sample(id=f"qa-{i}", prompt=PROMPT, references=("because",)) for i in range(4)]
    task = Task("qa", {"train": samples, "val": samples, "test": samples}, reward=None, truncation_side="right")
    overrides = ["model=tiny", f"model.max_prompt_tokens={LIMIT}", "rollout.batch_size=4", "eval.num_prompts=2"]
    config = load_config(None, [*overrides, f"run_dir={tmp_path}", "name=qa", "generation.max_new_tokens=4"])
    trainer = get_trainer("ppo")(
        config, task=task, reward=lambda p, g, r, m: [0.0] * len(g), console=Console(file=io.StringIO())
    )
    rollout = trainer.rollout(samples)
    ids = rollout.batch.prompt_ids[0][rollout.batch.prompt_mask[0].bool()]
    assert trainer.tokenizer.decode(ids, skip_special_tokens=True).startswith(QUESTION)
    assert rollout.extras["n_truncated"] == 4
