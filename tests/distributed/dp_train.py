"""Train with ``--set``-style overrides and save each rank's trainable parameters (run by the tests below).

python -m torch.distributed.run --nproc_per_node 2 tests/distributed/dp_train.py OUT_DIR key=value ...
python tests/distributed/dp_train.py OUT_DIR [--resume] key=value ...     (one process)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from safetensors.torch import save_file

from lmgym.algos import get_trainer
from lmgym.config import load_config


def token_reward(prompts, generations, references, meta) -> list[float]:
    """A reward of the generated token ids alone (the tiny model writes no words): mean of (id mod 7) / 7.
    Deterministic, so the same completions score the same in every process."""
    return [sum(t % 7 for t in m["gen_token_ids"]) / (7 * max(len(m["gen_token_ids"]), 1)) for m in meta]


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    resume = "--resume" in args
    config = load_config(None, [a for a in args if a != "--resume"])
    trainer = get_trainer(config.algo)(config, console=Console(quiet=True), reward=token_reward, resume=resume)
    result = trainer.train()
    rank = trainer.dist.rank
    params = {name: p.detach().contiguous() for name, p in trainer.policy.named_parameters() if p.requires_grad}
    save_file(params, str(out / f"rank{rank}.safetensors"))
    info = {
        "world_size": trainer.dist.world_size,
        "rank": rank,
        "start_iteration": trainer.start_iteration,
        "history": result.history,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info), encoding="utf-8")


if __name__ == "__main__":
    main()
