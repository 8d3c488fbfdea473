"""The token-level MDP as a gymnasium environment (``lmgym/TextGen-v0``, registered by ``import lmgym``)."""

from lmgym.envs.textgen import TextGenEnv

ENV_ID = "lmgym/TextGen-v0"

__all__ = ["ENV_ID", "TextGenEnv"]
