"""Checks made before a data-parallel run starts, and the one-process helpers (which must do nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.distributed.test_data_parallel import free_port

from lmgym.algos.onpolicy import OnPolicyTrainer
from lmgym.algos.trainer import Trainer
from lmgym.config import ConfigError, load_config
from lmgym.distributed import Distributed, DistributedError, launcher_sharding


def check(world: int, *overrides: str, k: int = 1, supported: bool = True) -> None:
    config = load_config(None, list(overrides))
    fake = SimpleNamespace(
        dist=Distributed(world_size=world),
        config=config,
        samples_per_prompt=k,
        algo_config=getattr(config, config.algo),
        supports_data_parallel=supported,
    )
    Trainer.check_processes(fake)
    OnPolicyTrainer.check_batch_sizes(fake)


def test_the_global_batch_must_split_over_the_processes() -> None:
    check(4, "rollout.batch_size=16", "ppo.minibatch_size=8")
    with pytest.raises(ConfigError, match=r"rollout.batch_size=12 gives 12 prompts .* multiple of 8"):
        check(8, "rollout.batch_size=12")
    # Group algorithms split prompts: 16 completions of k=4 are 4 prompts, too few for 8 processes.
    with pytest.raises(ConfigError, match="gives 4 prompts"):
        check(8, "algo=grpo", "rollout.batch_size=16", "grpo.minibatch_size=8", k=4)
    with pytest.raises(ConfigError, match=r"ppo.minibatch_size=6 .* multiple of 4"):
        check(4, "rollout.batch_size=16", "ppo.minibatch_size=6")


def test_single_process_algorithms_are_refused_with_several() -> None:
    with pytest.raises(DistributedError, match="algo=trpo runs in one process only"):
        check(2, "algo=trpo", supported=False)
    check(1, "algo=trpo", supported=False)  # one process is fine


def test_one_process_helpers_return_their_input() -> None:
    state = Distributed()
    x = torch.arange(6.0)
    assert state.sum(x) is x and state.gather(x) is x
    assert state.shard([1, 2, 3]) == [1, 2, 3]
    assert state.mean_floats({"a": 1.5}) == {"a": 1.5} and state.any(False) is False
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    state.average_gradients([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))


def test_shard_gives_each_rank_its_contiguous_slice() -> None:
    items = list(range(8))
    assert [Distributed(rank=r, world_size=4).shard(items) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(DistributedError, match="7 items do not split evenly over 2"):
        Distributed(rank=0, world_size=2).shard(items[:7])


def test_deepspeed_launcher_is_refused_with_the_fsdp_equivalents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(DistributedError, match=r"asks for DeepSpeed.*ZeRO-3 is accelerate\.sharding=full"):
        Distributed.setup()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FSDP_VERSION": "2"}, "full"),
        ({"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}, "grad_op"),
        ({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, "grad_op"),
        ({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "full"),
        ({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "NO_SHARD"}, "none"),
    ],
)
def test_an_accelerate_fsdp_config_sets_the_sharding(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """accelerate's own plugin reads the launcher's variables; 'auto' takes its answer, a config value wins."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launcher_sharding() == expected
    # One process: nothing to shard over, so the run is unsharded whatever was asked.
    assert Distributed.setup("no", "cpu", "auto").sharding == "none"
    assert Distributed.setup("no", "cpu", "full").sharding == "none"


def test_an_unknown_sharding_is_refused() -> None:
    with pytest.raises(DistributedError, match=r"accelerate\.sharding must be one of auto, none, full, grad_op"):
        Distributed.setup("no", "cpu", "zero3")


def test_launcher_precision_is_taken_when_the_config_says_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert Distributed.setup("auto", "cpu").mixed_precision == "bf16"
    assert Distributed.setup("no", "cpu").mixed_precision == "no"


LEAVES_THE_GROUP = """
import atexit, os, sys
from pathlib import Path
import torch.distributed as dist
out = Path(sys.argv[1]) / f"rank{os.environ['RANK']}.txt"
# Registered first, so it runs last: after lmgym's own exit handler.
atexit.register(lambda: out.write_text(f"in a process group at exit: {dist.is_initialized()}"))
from lmgym.distributed import Distributed
d = Distributed.setup()
d.barrier()
assert d.world_size == 2
"""


def test_a_launched_process_leaves_its_process_group_before_exit(tmp_path: Path) -> None:
    # Left to the interpreter's teardown, gloo's threads can abort a finished run ("terminate called without an
    # active exception"); the group is destroyed at exit instead.
    script = tmp_path / "leave.py"
    script.write_text(LEAVES_THE_GROUP, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    proc = subprocess.run([*cmd, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "in a process group at exit: False"
