"""Train with ``--set``-style overrides and save each rank's trainable parameters (run by the tests beside it).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/dp_train.py OUT_DIR ALGOS key=value ...
    python tests/distributed/dp_train.py OUT_DIR ALGOS [--resume] key=value ...      (one process)

ALGOS is a comma-separated list (e.g. ``ppo,trpo``): each trains in turn, in the same processes, as run
``<algo>`` under run_dir, and leaves ``<algo>-rank<R>.safetensors`` and ``<algo>-rank<R>.json`` in OUT_DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from safetensors.torch import save_file

from lmgym.algos import get_trainer
from lmgym.config import load_config
from lmgym.distributed import is_sharded_tensor


def token_reward(prompts, generations, references, meta) -> list[float]:
    """A reward of the generated token ids alone (the tiny model writes no words): mean of (id mod 7) / 7.
    Deterministic, so the same completions score the same in every process."""
    return [sum(t % 7 for t in m["gen_token_ids"]) / (7 * max(len(m["gen_token_ids"]), 1)) for m in meta]


def train(out: Path, algo: str, overrides: list[str], resume: bool) -> None:
    config = load_config(None, [*overrides, f"algo={algo}", f"name={algo}"])
    trainer = get_trainer(config.algo)(config, console=Console(quiet=True), reward=token_reward, resume=resume)
    result = trainer.train()
    rank, lm = trainer.dist.rank, trainer.policy.model
    # Sharded (FSDP) parameters are gathered whole: every rank takes part, in the same order.
    params = {
        name: (p.full_tensor() if is_sharded_tensor(p) else p).detach().contiguous()
        for name, p in trainer.policy.named_parameters()
        if p.requires_grad
    }
    save_file(params, str(out / f"{algo}-rank{rank}.safetensors"))
    info = {
        "world_size": trainer.dist.world_size,
        "rank": rank,
        "start_iteration": trainer.start_iteration,
        "history": result.history,
        "sharding": trainer.dist.sharding,
        # Elements of the language model's weights this process stores, and in all.
        "lm_numel_local": sum((p.to_local() if is_sharded_tensor(p) else p).numel() for p in lm.parameters()),
        "lm_numel": sum(p.numel() for p in lm.parameters()),
    }
    (out / f"{algo}-rank{rank}.json").write_text(json.dumps(info), encoding="utf-8")


def main() -> None:
    out, algos, args = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
    resume = "--resume" in args
    for algo in algos:
        train(out, algo, [a for a in args if a != "--resume"], resume)


if __name__ == "__main__":
    main()
