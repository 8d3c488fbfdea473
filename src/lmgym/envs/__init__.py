"""The token-level MDP as a gymnasium environment (``lmgym/TextGen-v0``)."""

import gymnasium

from lmgym.envs.textgen import TextGenEnv

ENV_ID = "lmgym/TextGen-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="lmgym.envs.textgen:make_textgen_env")

__all__ = ["ENV_ID", "TextGenEnv"]
