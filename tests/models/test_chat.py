"""Chat prompts: the ids are exactly the template's, generation stops at the end of the assistant's turn, plain
prompts are untouched, and the errors name the model and the option."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lmgym.algos import get_trainer
from lmgym.config import load_config
from lmgym.data.registry import load_task
from lmgym.data.sample import Sample
from lmgym.errors import InputError
from lmgym.models.chat import configure_chat, end_of_turn_id, stop_token_ids
from lmgym.models.loading import load_tokenizer
from lmgym.models.policy import generation_mask, make_generation_config
from lmgym.rewards.base import as_reward
from lmgym.rollout.sampling import configure_tokenizer, score_generations, tokenize_prompts

# A template for the tiny tokenizer whose end-of-turn token (<unk>) is not its EOS (</s>).
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}<unk>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
MESSAGES = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "Name a colour."}],
]


def template_ids(tokenizer, messages) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


@pytest.fixture(scope="module")
def smollm() -> object:
    return load_tokenizer("smollm2-135m-instruct")


def test_a_chat_message_column_gives_exactly_the_templates_ids(tmp_path: Path, smollm) -> None:
    """A dataset column of messages (task: dataset) through the bundled tokenizer: apply_chat_template's ids."""
    rows = [{"messages": m, "answer": str(i)} for i, m in enumerate(MESSAGES * 3)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = load_task("dataset", path=str(tmp_path / "chat.jsonl"), prompt_field="messages", holdout=0.2)
    config = load_config(None, ["model=smollm2-135m-instruct"])
    configure_tokenizer(smollm, config, task)
    prompts = [s.prompt for s in task.split("train")]
    ids, mask, n_truncated = tokenize_prompts(smollm, prompts, 128)
    assert n_truncated == 0 and smollm.padding_side == "left"
    assert unpadded(ids, mask) == [template_ids(smollm, p) for p in prompts]
    assert bool((mask[:, -1] == 1).all())  # left padding: every prompt ends at the open assistant turn
    assert smollm.decode(ids[0][mask[0].bool()]).endswith("<|im_start|>assistant\n")
    assert stop_token_ids(smollm) == [smollm.convert_tokens_to_ids("<|im_end|>")]  # SmolLM2's EOS is its <|im_end|>


def test_plain_prompts_are_untouched_unless_rollout_chat(smollm) -> None:
    prompts = ["The film was", "Two plus three is"]
    configure_chat(smollm, "auto", wrap_strings=False, model="smollm2")
    ids, mask, _ = tokenize_prompts(smollm, prompts, 64)
    expected = smollm(prompts, padding=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    configure_chat(smollm, "auto", wrap_strings=True, model="smollm2")  # rollout.chat: one user message each
    ids, mask, _ = tokenize_prompts(smollm, prompts, 64)
    assert unpadded(ids, mask) == [template_ids(smollm, [{"role": "user", "content": p}]) for p in prompts]


def test_generation_stops_at_the_end_of_turn_token(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("tiny")
    (tmp_path / "chat.jinja").write_text(TEMPLATE, encoding="utf-8")
    configure_chat(tokenizer, str(tmp_path / "chat.jinja"), wrap_strings=False, model="tiny")
    eos, end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<unk>")
    assert end_of_turn_id(tokenizer) == end and stop_token_ids(tokenizer) == [eos, end]
    assert make_generation_config(tokenizer, max_new_tokens=4).eos_token_id == [eos, end]
    gen = torch.tensor([[7, end, 9, 9], [7, 8, eos, 9], [7, 8, 9, 9]])
    mask = generation_mask(gen, stop_token_ids(tokenizer), tokenizer.pad_token_id)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_a_long_chat_prompt_keeps_its_template(tmp_path: Path, smollm) -> None:
    configure_chat(smollm, "auto", wrap_strings=False, model="smollm2")
    long = [{"role": "user", "content": "Summarise: " + "the harbour was quiet that winter " * 40}]
    ids, mask, n_truncated = tokenize_prompts(smollm, [long], 48)
    text = smollm.decode(ids[0][mask[0].bool()])
    assert n_truncated == 1 and int(mask.sum()) <= 48
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_rewards_see_the_last_user_message_and_the_conversation(smollm) -> None:
    seen = {}

    def reward(prompts, generations, references, meta):
        seen.update(prompts=prompts, messages=[m.get("messages") for m in meta])
        return [0.0] * len(generations)

    samples = [Sample("a", MESSAGES[0]), Sample("b", "plain text")]
    gen = torch.tensor([[5, smollm.eos_token_id], [6, smollm.eos_token_id]])
    score_generations(as_reward(reward), samples, ["x", "y"], gen, torch.ones_like(gen), smollm)
    assert seen["prompts"] == ["What is 2 + 3?", "plain text"]
    assert seen["messages"] == [MESSAGES[0], None]


def test_message_prompts_need_a_template_and_the_errors_say_which_option(tmp_path: Path) -> None:
    tiny = load_tokenizer("tiny")  # no chat template
    with pytest.raises(InputError, match=r"has no chat template .*model\.chat_template"):
        tokenize_prompts(tiny, [MESSAGES[1]], 32)
    with pytest.raises(InputError, match=r"rollout\.chat=true: model 'tiny' has no chat template"):
        configure_chat(tiny, "auto", wrap_strings=True, model="tiny")
    smollm = load_tokenizer("smollm2-135m-instruct")
    configure_chat(smollm, "none", wrap_strings=False, model="smollm2")
    with pytest.raises(InputError, match=r"model\.chat_template=none"):
        tokenize_prompts(smollm, [MESSAGES[1]], 32)
    with pytest.raises(FileNotFoundError, match=r"neither auto, none nor a \.jinja file"):
        configure_chat(smollm, str(tmp_path / "missing.jinja"), wrap_strings=False, model="smollm2")


def test_a_training_run_with_a_template_file(tmp_path: Path) -> None:
    """The tiny model on the toy task with rollout.chat and a .jinja template: the rollout's prompts are the
    template's, and an iteration trains."""
    (tmp_path / "chat.jinja").write_text(TEMPLATE, encoding="utf-8")
    config = load_config(None, [
        "task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", "name=chat", "rollout.batch_size=4",
        "ppo.minibatch_size=4", "eval.num_prompts=2", "rollout.chat=true", f"model.chat_template={tmp_path}/chat.jinja",
        "model.max_prompt_tokens=48",
    ])  # fmt: skip
    trainer = get_trainer("ppo")(config, console=Console(file=io.StringIO()))
    samples = trainer.train_samples[:4]
    rollout = trainer.rollout(samples)
    tok = trainer.tokenizer
    for row, mask, sample in zip(rollout.batch.prompt_ids, rollout.batch.prompt_mask, samples, strict=True):
        assert row[mask.bool()].tolist() == template_ids(tok, [{"role": "user", "content": sample.prompt}])
    assert trainer.generation.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<unk>")]
    assert trainer.step(1)["update_steps"] > 0
