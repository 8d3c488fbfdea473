"""Build the reward a config's ``reward:`` section names (see `lmgym.config.RewardConfig`).

``name`` resolves, in order: ``package.module:function`` (only that module is imported), a folder
holding a reward model trained by ``lmgym rm train``, a reward class registered here (``classifier``,
``reward_model``, ``r3``, ``vader``), then any metric of the registry (its per-sample value, ``key``
choosing among several). ``parts`` combine several such rewards; scale/offset, clip, normalisation and
per-token shaping wrap the result in that order.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmgym.errors import InputError, LmgymError, UserCodeError
from lmgym.rewards.base import Reward, as_reward
from lmgym.rewards.compose import Affine, Clip, PerToken, Product, WeightedSum

if TYPE_CHECKING:
    from lmgym.config import RewardConfig


def _classifier(**args: Any) -> Reward:
    from lmgym.rewards.classifier import ClassifierReward

    return ClassifierReward(**args)


def _reward_model(**args: Any) -> Reward:
    from lmgym.rewards.reward_model import RewardModelReward

    return RewardModelReward(**args)


def _r3(**args: Any) -> Reward:
    from lmgym.rewards.r3 import R3Reward

    return R3Reward(**args)


def _vader(**args: Any) -> Reward:
    from lmgym.rewards.sentiment import VaderSentiment

    return VaderSentiment(**args)


# Rewards that are more than a metric's per-sample value (they are also listed as metrics).
REWARD_CLASSES = {"classifier": _classifier, "reward_model": _reward_model, "r3": _r3, "vader": _vader}


def named_reward(
    name: str, key: str | None = None, args: dict[str, Any] | None = None, field: str = "reward.name"
) -> Reward:
    """The reward ``name`` stands for (module docstring); errors name ``field``."""
    args = dict(args or {})
    if ":" in name and not Path(name).exists():
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise InputError(f"{field}: cannot import module {module_name!r} ({err})") from None
        if not hasattr(module, attr):
            raise InputError(f"{field}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(module, attr)
        if not args:
            return as_reward(target)
        try:
            return as_reward(target(**args))
        except LmgymError:
            raise
        except Exception as err:
            raise UserCodeError(f"{field}={name!r} (a reward factory called with {args})", err) from err
    if Path(name).expanduser().is_dir():
        return _reward_model(path=str(Path(name).expanduser()), **args)
    try:
        if name in REWARD_CLASSES:
            return REWARD_CLASSES[name](**args)
        from lmgym.rewards.catalog import load_metric
        from lmgym.rewards.metric import MetricReward

        return MetricReward(load_metric(name, **args), key)
    except TypeError as err:  # a wrong or missing option
        raise InputError(f"{field}={name!r}: bad args ({err})") from None
    except KeyError as err:
        raise InputError(f"{field}: {err.args[0] if err.args else err}") from None


def build_reward(config: RewardConfig, default: Reward | None) -> Reward | None:
    """The configured reward; ``default`` (the task's) when the section names none. None if neither exists."""
    if config.name:
        reward: Reward | None = named_reward(config.name, config.key, config.args)
    elif config.parts:
        parts = [
            (p.weight, named_reward(p.name, p.key, p.args, field=f"reward.parts[{i}].name"))
            for i, p in enumerate(config.parts)
        ]
        reward = WeightedSum(parts, "sum") if config.combine == "sum" else Product(parts, "product")
    else:
        reward = default
    if reward is None or config.is_default:
        return reward
    reward = as_reward(reward)
    if (config.scale, config.offset) != (1.0, 0.0):
        reward = Affine(reward, config.scale, config.offset)
    if config.clip is not None:
        reward = Clip(reward, *config.clip)
    if config.normalize:
        from lmgym.rewards.normalize import RunningNormalize

        reward = RunningNormalize(reward)
    if config.per_token != "none":
        reward = PerToken(reward, config.per_token)
    return reward
