"""TextGenEnv: gymnasium conformance, registration, and agreement with the batched rollout."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from transformers import LogitsProcessor, LogitsProcessorList

import lmgym  # noqa: F401  (registers lmgym/TextGen-v0)
from lmgym.data.registry import load_task
from lmgym.data.task import Task
from lmgym.envs import ENV_ID, TextGenEnv
from lmgym.models.loading import LoadedModel, load_model, load_tokenizer
from lmgym.models.policy import Policy, ReferenceModel, make_generation_config
from lmgym.rewards.sentiment import VaderSentiment
from lmgym.rollout.rollout import collect_rollout
from lmgym.rollout.sampling import tokenize_prompts

HORIZON = 12


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def test_check_env_passes(tokenizer) -> None:
    env = TextGenEnv("toy", tokenizer, max_prompt_tokens=16, max_new_tokens=5)
    check_env(env.unwrapped, skip_render_check=True)
    per_token = TextGenEnv(load_task("toy", per_token=True), tokenizer, max_prompt_tokens=16, max_new_tokens=5)
    check_env(per_token.unwrapped, skip_render_check=True)


@pytest.mark.filterwarnings("ignore:.*render fps")
def test_gymnasium_make_after_import() -> None:
    assert ENV_ID == "lmgym/TextGen-v0" and ENV_ID in gymnasium.registry
    env = gymnasium.make("lmgym/TextGen-v0", model="tiny")
    assert isinstance(env.unwrapped, TextGenEnv)
    assert env.unwrapped.task.name == "sentiment"
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert info["prompt"] and info["generation"] == ""
    assert env.action_space.n == len(env.unwrapped.tokenizer)
    obs, reward, terminated, truncated, info = env.step(int(env.unwrapped.tokenizer.eos_token_id))
    assert terminated and not truncated and reward == 0.0  # empty text: VADER 0
    env.close()

    toy = gymnasium.make("lmgym/TextGen-v0", model="tiny", task="toy", max_new_tokens=3, render_mode="ansi")
    toy.reset(seed=0)
    the = toy.unwrapped.tokenizer.convert_tokens_to_ids("Ġthe")
    results = [toy.step(the) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]  # truncated at the horizon
    assert [r[1] for r in results] == [0.0, 0.0, 1.0]  # the share, paid on the last step
    assert toy.render().endswith("| the the the")


def test_reset_is_seeded_and_errors(tokenizer) -> None:
    env = TextGenEnv("toy", tokenizer, max_prompt_tokens=16, max_new_tokens=4, render_mode="ansi")
    a = env.reset(seed=11)[1]["sample_id"]
    b = env.reset(seed=11)[1]["sample_id"]
    assert a == b
    ids = {env.reset(seed=s)[1]["sample_id"] for s in range(20)}
    assert len(ids) > 1
    _, info = env.reset(options={"sample_index": 5})
    assert info["sample_id"] == env.samples[5].id
    with pytest.raises(ValueError, match="not a token id"):
        env.step(len(tokenizer))
    env.step(tokenizer.eos_token_id)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(5)


class ForceTokens(LogitsProcessor):
    """Forces token ``forced[(row, step)]`` at that generation step (other steps sample freely)."""

    def __init__(self, start_len: int, forced: dict[tuple[int, int], int]) -> None:
        self.start_len, self.forced = start_len, forced

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.start_len
        for (row, at), token in self.forced.items():
            if at == step:
                scores[row] = -float("inf")
                scores[row, token] = 0.0
        return scores


@pytest.fixture(scope="module", params=["tiny", "tiny-seq2seq"])
def loaded(request: pytest.FixtureRequest) -> LoadedModel:
    return load_model(request.param)


def _sentiment_task() -> Task:
    return load_task("sentiment", n_train=24, n_val=2, n_test=2)


@pytest.mark.parametrize(
    ("make_task", "max_prompt_tokens"),
    [
        pytest.param(lambda: load_task("toy"), 16, id="toy-sequence"),
        pytest.param(lambda: load_task("toy", per_token=True), 16, id="toy-per-token"),
        pytest.param(_sentiment_task, 24, id="sentiment-vader"),  # long prompts: truncated on the left
    ],
)
def test_env_replays_batched_rollout(loaded: LoadedModel, make_task, max_prompt_tokens: int) -> None:
    tok = loaded.tokenizer
    task = make_task()
    split = "train"
    indices = [3, 0, 7, 12, 5, 9, 1, 20, 14, 11]
    samples = [task.split(split)[i] for i in indices]
    policy = Policy(loaded.model, tok, loaded.is_seq2seq)
    reference = ReferenceModel(loaded.model, loaded.is_seq2seq)
    generation = make_generation_config(tok, max_new_tokens=HORIZON, do_sample=True, top_k=0, temperature=1.0)
    # Rows 0, 2, 4 end with EOS (row 2 at once), the others run to the horizon (EOS has p ≈ 1/512 per step).
    # Some rewarded words are forced too, so that the rewards compared below are not all zero.
    eos = tok.eos_token_id
    ends = {0: 4, 2: 0, 4: 9}
    forced = {(row, step): eos for row, step in ends.items()}
    words = ["Ġthe"] if task.name == "toy" else ["Ġfun", "Ġbad", "Ġsad"]
    word_ids = [tok.convert_tokens_to_ids(w) for w in words]
    assert tok.unk_token_id not in word_ids
    for k, (row, step) in enumerate([(0, 1), (0, 3), (1, 0), (1, 11), (3, 5), (4, 8), (6, 2), (6, 3), (6, 4)]):
        forced[(row, step)] = word_ids[k % len(word_ids)]
    prompt_ids, _, _ = tokenize_prompts(tok, [s.prompt for s in samples], max_prompt_tokens)
    start_len = 1 if loaded.is_seq2seq else prompt_ids.shape[1]  # decoder start token / left-padded prompts
    processor = LogitsProcessorList([ForceTokens(start_len, forced)])
    torch.manual_seed(1)
    rollout = collect_rollout(
        policy, reference, task.reward, samples, generation, max_prompt_tokens, logits_processor=processor
    )
    assert rollout.batch.gen_ids.shape[1] <= HORIZON

    env = TextGenEnv(task, tok, split=split, max_prompt_tokens=max_prompt_tokens, max_new_tokens=HORIZON)
    lengths = rollout.gen_lengths.tolist()
    ended_by = {"eos": 0, "horizon": 0}
    for i, index in enumerate(indices):
        n = lengths[i]
        tokens = rollout.batch.gen_ids[i, :n].tolist()
        obs, info = env.reset(options={"sample_index": index})
        assert info["sample_id"] == samples[i].id
        rewards, terminated, truncated = [], False, False
        for t, token in enumerate(tokens):
            assert not (terminated or truncated), f"sample {i}: the episode ended before token {t} of {n}"
            obs, reward, terminated, truncated, info = env.step(token)
            rewards.append(reward)
        # The episode ends exactly where the rollout's mask ends.
        assert terminated or truncated, f"sample {i}: the episode did not end after {n} tokens"
        if terminated:
            assert tokens[-1] == tok.eos_token_id
            ended_by["eos"] += 1
        else:
            assert n == HORIZON and tok.eos_token_id not in tokens
            ended_by["horizon"] += 1
        assert rewards == rollout.task_rewards[i, :n].tolist()
        assert info["generation"] == rollout.generations[i]
        # The observation holds the same prompt tokens as the batch, then the generated ones.
        batch_prompt = rollout.batch.prompt_ids[i][rollout.batch.prompt_mask[i].bool()].tolist()
        ids, mask = obs["input_ids"], obs["attention_mask"]
        assert ids[:max_prompt_tokens][mask[:max_prompt_tokens].astype(bool)].tolist() == batch_prompt
        assert ids[max_prompt_tokens : max_prompt_tokens + n].tolist() == tokens
        assert mask[max_prompt_tokens:].tolist() == [1] * n + [0] * (HORIZON - n)
        assert env.observation_space.contains(obs)

    assert ended_by["eos"] == 3 and ended_by["horizon"] == len(indices) - 3
    assert [lengths[r] for r in sorted(ends)] == [ends[r] + 1 for r in sorted(ends)]
    nonzero = rollout.task_rewards.abs().sum(-1) > 0
    assert int(nonzero.sum()) >= 3  # the forced rewarded words pay (VADER may still net some rows to 0)
    if isinstance(task.reward, VaderSentiment):
        assert rollout.extras["n_truncated"] > 0  # the left-truncated prompts agree too
    if task.reward.per_token:
        # Per-token rewards are paid exactly on the steps where the target word was generated.
        is_the = (rollout.batch.gen_ids == word_ids[0]) & rollout.mask.bool()
        assert torch.equal(rollout.task_rewards, is_the.float() / HORIZON)
    else:
        # A sequence reward sits on the last generated token only.
        last = torch.tensor(lengths) - 1
        off_last = rollout.task_rewards.clone()
        off_last[torch.arange(len(indices)), last] = 0
        assert torch.all(off_last == 0)


def test_env_pays_forced_target_tokens(tokenizer) -> None:
    """A hand-written episode: per-token toy rewards are 1/12 on each 'the', the sequence version the share."""
    the = tokenizer.convert_tokens_to_ids("Ġthe")
    other = tokenizer.convert_tokens_to_ids("Ġmovie")
    actions = [the, other, the, tokenizer.eos_token_id]
    per_token = TextGenEnv(load_task("toy", per_token=True), tokenizer, max_prompt_tokens=16)
    per_token.reset(options={"sample_index": 0})
    paid = [per_token.step(a)[1] for a in actions]
    assert paid == pytest.approx([1 / 12, 0.0, 1 / 12, 0.0])
    sequence = TextGenEnv("toy", tokenizer, max_prompt_tokens=16)
    sequence.reset(options={"sample_index": 0})
    out = [sequence.step(a) for a in actions]
    assert [o[1] for o in out] == pytest.approx([0.0, 0.0, 0.0, 2 / 4])  # 2 of the 4 tokens (EOS counts)
    assert out[-1][2] is True and out[-1][3] is False
    assert out[-1][4]["generation"] == " the movie the"
    assert np.array_equal(out[-1][0]["input_ids"][16:20], np.array(actions))
