"""Reward composition, clipping, running normalisation, per-token shaping, and the config's reward section."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from lmgym.api import train
from lmgym.config import ConfigError, RewardConfig, load_config
from lmgym.rewards.base import FunctionReward
from lmgym.rewards.compose import Clip, PerToken, Product, WeightedSum
from lmgym.rewards.factory import build_reward, named_reward
from lmgym.rewards.metric import MetricReward
from lmgym.rewards.normalize import RunningNormalize

PROMPTS, GENS, REFS = ["p", "q"], ["a b c", "d e"], [["a b c"], ["x"]]
META = [{"gen_token_ids": [1, 2, 3]}, {"gen_token_ids": [4, 5]}]


def word_count(prompts, generations, references, meta):
    return [float(len(g.split())) for g in generations]


def constant_reward(prompts, generations, references, meta):
    return [0.75] * len(generations)


def token_bonus(prompts, generations, references, meta):
    return [[0.1] * len(m["gen_token_ids"]) for m in meta]


token_bonus.per_token = True


def scaled_constant(value: float):
    """A factory: with args, a 'module:function' reward name is called with them."""
    return lambda prompts, generations, references, meta: [value] * len(generations)


def test_weighted_sum_mixes_sequence_and_token_rewards() -> None:
    seq = WeightedSum([(2.0, FunctionReward(word_count)), (-1.0, FunctionReward(constant_reward))])
    assert seq(PROMPTS, GENS, REFS, META) == pytest.approx([2 * 3 - 0.75, 2 * 2 - 0.75])
    mixed = WeightedSum([(1.0, FunctionReward(word_count)), (0.5, FunctionReward(token_bonus, per_token=True))])
    assert mixed.per_token
    # The sequence reward lands on the last token; the totals are the sums of the parts.
    assert mixed(PROMPTS, GENS, REFS, META) == [pytest.approx([0.05, 0.05, 3.05]), pytest.approx([0.05, 2.05])]
    with pytest.raises(ValueError, match="sample 0 lacks meta\\['gen_token_ids'\\]"):
        mixed(PROMPTS, GENS, REFS, [{}, {}])


def test_product_clip_and_per_token_shaping() -> None:
    product = Product([(1.0, FunctionReward(word_count)), (2.0, FunctionReward(constant_reward))])
    assert product(PROMPTS, GENS, REFS, META) == pytest.approx([3 * 0.75**2, 2 * 0.75**2])
    with pytest.raises(ValueError, match="sequence-level rewards only"):
        Product([(1.0, FunctionReward(token_bonus, per_token=True))])
    assert Clip(FunctionReward(word_count), 0.0, 2.5)(PROMPTS, GENS, REFS, META) == [2.5, 2.0]
    assert PerToken(FunctionReward(word_count), "uniform")(PROMPTS, GENS, REFS, META) == [[1.0] * 3, [1.0] * 2]
    assert PerToken(FunctionReward(word_count), "last")(PROMPTS, GENS, REFS, META) == [[0, 0, 3.0], [0, 2.0]]


def test_incremental_shaping_credits_each_token_with_what_it_added() -> None:
    # ROUGE-1 F against "the cat": "" 0, "the" 2/3 (P 1, R 1/2), "the cat" 1, "the cat sat" 0.8 (P 2/3, R 1).
    shaped = PerToken(named_reward("rouge", key="rouge-1"), "incremental")
    meta = [{"gen_token_ids": [1, 2, 3], "gen_tokens": ["the", " cat", " sat"]}]
    rows = shaped(["p"], ["the cat sat"], [["the cat"]], meta)
    assert rows[0] == pytest.approx([2 / 3, 1 / 3, -0.2])
    assert sum(rows[0]) == pytest.approx(0.8)  # the sequence reward of the whole text


def test_running_normalisation_matches_the_pooled_statistics() -> None:
    batches = [[1.0, 2.0, 3.0], [10.0, 20.0], [5.0, 5.0, 5.0, 6.0]]
    stream = iter(batches)
    reward = RunningNormalize(FunctionReward(lambda p, g, r, m: next(stream)))
    seen: list[float] = []
    for batch in batches:
        out = reward(["x"] * len(batch), ["y"] * len(batch), [[]] * len(batch), [{}] * len(batch))
        seen += batch
        mean, std = statistics.fmean(seen), statistics.pstdev(seen)
        assert out == pytest.approx([(x - mean) / std for x in batch])
    assert reward.stats.count == 9


def test_named_rewards_resolve_metrics_functions_and_factories() -> None:
    rouge = named_reward("rouge", key="rouge-1")
    assert isinstance(rouge, MetricReward)
    assert rouge(PROMPTS, GENS, REFS, META) == pytest.approx([1.0, 0.0])
    assert named_reward("test_compose:word_count")(PROMPTS, GENS, REFS, META) == [3.0, 2.0]
    assert named_reward("test_compose:scaled_constant", args={"value": 2.0})(PROMPTS, GENS, REFS, META) == [2.0, 2.0]
    with pytest.raises(ValueError, match=r"reward\.name: unknown metric 'rogue'; did you mean 'rouge'"):
        named_reward("rogue")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        named_reward("no_such_module_xyz:f")
    with pytest.raises(ValueError, match=r"reward\.parts\[1\]\.name: module 'test_compose' has no attribute 'nope'"):
        build_reward(RewardConfig(parts=[{"name": "rouge"}, {"name": "test_compose:nope"}]), None)


def test_reward_config_section_builds_and_validates() -> None:
    config = load_config(None, ["reward.name=test_compose:word_count", "reward.scale=-1", "reward.offset=1"])
    reward = build_reward(config.reward, default=None)
    assert reward(PROMPTS, GENS, REFS, META) == [-2.0, -1.0]
    parts = RewardConfig(
        parts=[{"name": "test_compose:word_count", "weight": 2.0}, {"name": "test_compose:constant_reward"}],
        clip=(None, 5.0),
    )
    assert build_reward(parts, None)(PROMPTS, GENS, REFS, META) == [5.0, 4.75]
    task_default = FunctionReward(constant_reward)
    assert build_reward(RewardConfig(), task_default) is task_default  # an empty section keeps the task's reward
    assert build_reward(RewardConfig(scale=2.0), task_default)(PROMPTS, GENS, REFS, META) == [1.5, 1.5]
    assert load_config(None, ["reward=bleu"]).reward.name == "bleu"
    with pytest.raises(ConfigError, match=r"either reward\.name or reward\.parts"):
        load_config(None, ["reward.name=bleu", "reward.parts=[{name: rouge}]"])
    with pytest.raises(ConfigError, match=r"reward\.clip: low 2\.0 > high 1\.0"):
        load_config(None, ["reward.clip=[2, 1]"])
    with pytest.raises(ConfigError, match=r"unknown config key 'reward\.wieght'"):
        load_config(None, ["reward.wieght=1"])


# Four samples whose raw scores land on both sides of the clip bounds after 1 − x (scale −1, offset 1).
ORDER_GENS = ["g0", "g1", "g2", "g3"]
ORDER_RAW = {"g0": 0.2, "g1": 0.9, "g2": 1.5, "g3": -0.4}
ORDER_META = [{"gen_token_ids": list(range(n))} for n in (2, 1, 4, 2)]


def raw_by_text(prompts, generations, references, meta):
    return [ORDER_RAW[g] for g in generations]


def score_order(**section) -> list:
    reward = build_reward(RewardConfig(scale=-1.0, offset=1.0, clip=(0.0, 0.5), **section), raw_by_text)
    assert reward is not None
    return reward([""] * 4, ORDER_GENS, [[""]] * 4, ORDER_META)


def test_reward_section_applies_scale_offset_then_clip_then_normalize_then_per_token() -> None:
    # 1 − x: 0.8, 0.1, −0.5, 1.4; then clip to [0, 0.5]: 0.5, 0.1, 0.0, 0.5.
    # (Clip first would give 1 − [0.2, 0.5, 0.5, 0.0] = 0.8, 0.5, 0.5, 1.0.)
    clipped = [0.5, 0.1, 0.0, 0.5]
    assert score_order() == pytest.approx(clipped, abs=1e-12)
    # Normalisation (first batch: its own mean and population std) acts on the clipped scores;
    # normalising first and clipping after would leave every value inside [0, 0.5].
    mean = sum(clipped) / 4  # 0.275
    std = math.sqrt(sum((c - mean) ** 2 for c in clipped) / 4)  # sqrt(0.051875)
    z = [(c - mean) / (std + 1e-8) for c in clipped]
    assert z[2] < -1.0 and z[0] > 0.5  # outside the clip range: clipping did not come last
    assert score_order(normalize=True) == pytest.approx(z, rel=1e-9)
    # per_token last: each sequence's normalised value goes on its last token, zeros elsewhere. Shaping before
    # normalising would pool the zeros of the other tokens into the statistics.
    assert score_order(normalize=True, per_token="last") == [
        pytest.approx([0.0, z[0]], abs=1e-9),
        pytest.approx([z[1]], abs=1e-9),
        pytest.approx([0.0, 0.0, 0.0, z[2]], abs=1e-9),
        pytest.approx([0.0, z[3]], abs=1e-9),
    ]
    # uniform: the normalised value split evenly over the tokens.
    uniform = score_order(normalize=True, per_token="uniform")
    assert uniform == [pytest.approx([v / n] * n, rel=1e-9) for v, n in zip(z, (2, 1, 4, 2), strict=True)]


def test_trainer_uses_the_configured_reward(tmp_path: Path) -> None:
    run = [
        "task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", "name=r", "iterations=1",
        "rollout.batch_size=4", "ppo.epochs=1", "ppo.minibatch_size=4", "eval.num_prompts=4", "eval.batch_size=4",
        "reward.name=test_compose:constant_reward", "reward.scale=2", "reward.offset=0.5",
    ]  # fmt: skip
    result = train(None, run, console=Console(file=io.StringIO()))
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train_record = next(r for r in records if r["kind"] == "train")
    assert train_record["reward/task"] == pytest.approx(2 * 0.75 + 0.5)
    assert result.after["reward"] == pytest.approx(2.0)
    # A reward object passed in Python wins over the config.
    result = train(None, [*run[:4], "name=r2", *run[5:]], reward=word_count, console=Console(file=io.StringIO()))
    assert result.after["reward"] != pytest.approx(2.0)
