"""Mixed precision, gradient accumulation, gradient checkpointing and the generation backend option."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmgym.distributed import DistributedError

from .helpers import make_trainer, trainable


def train_steps(tmp_path: Path, name: str, *extra: str, steps: int = 2) -> dict[str, torch.Tensor]:
    trainer = make_trainer(tmp_path, name, *extra)
    for iteration in range(1, steps + 1):
        trainer.step(iteration)
    return trainable(trainer)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_gradient_accumulation_matches_the_whole_minibatch(tmp_path: Path) -> None:
    # Equal-length completions: the mean of two half-minibatch losses is the whole minibatch's loss.
    whole = train_steps(tmp_path, "whole")
    accumulated = train_steps(tmp_path, "accumulated", "accelerate.grad_accumulation_steps=2")
    assert_same(accumulated, whole)
    assert float(whole["value_head.weight"].abs().max()) > 1e-4  # the runs did train


def test_micro_batches_are_weighted_by_their_tokens(tmp_path: Path) -> None:
    """Completions that end early put fewer tokens in one micro-batch than in the other; the accumulated
    gradient must still be the token mean of the whole minibatch (what one process gets in one pass)."""
    trainer = make_trainer(tmp_path, "uneven")
    rollout = trainer.rollout(trainer.train_samples[:8])
    rollout.mask[:4, 2:] = 0  # the first micro-batch's completions end after 2 tokens, the second's after 6
    rewards, _ = trainer.kl_penalised_rewards(rollout)
    advantages, returns = trainer.advantages(rollout, rewards)
    old = trainer.old_logprobs(rollout)

    def gradient(micro_batches: int) -> dict[str, torch.Tensor]:
        trainer.config.accelerate.grad_accumulation_steps = micro_batches
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.backward_minibatch(rollout, torch.arange(8), advantages, returns, old)
        return {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}

    whole, accumulated = gradient(1), gradient(2)
    assert_same(accumulated, whole)
    assert max(float(g.abs().max()) for g in whole.values()) > 1e-4


def test_gradient_checkpointing_recomputes_blocks_and_gives_the_same_update(tmp_path: Path) -> None:
    plain = make_trainer(tmp_path, "plain")
    checkpointed = make_trainer(tmp_path, "checkpointed", "accelerate.gradient_checkpointing=true")
    calls = {}
    for label, trainer in (("plain", plain), ("checkpointed", checkpointed)):
        attention = trainer.policy.model.model.layers[0].self_attn
        count = [0]
        handle = attention.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        for iteration in (1, 2):
            trainer.step(iteration)
        handle.remove()
        calls[label] = count[0]
    # Each update forward of the block runs again in the backward pass.
    assert calls["checkpointed"] > calls["plain"]
    assert_same(trainable(checkpointed), trainable(plain))
    assert not checkpointed.policy.model.model.layers[0].training  # generation keeps its KV cache


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "bf16", "accelerate.mixed_precision=bf16")
    dtypes = set()
    handle = trainer.policy.model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, _a, out: dtypes.add(out.dtype)
    )
    record = trainer.step(1)
    handle.remove()
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())  # master weights stay fp32
    assert math.isfinite(record["loss/total"]) and record["grad_norm"] > 0


def test_fp16_needs_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DistributedError, match="fp16 needs a GPU"):
        make_trainer(tmp_path, "fp16", "accelerate.mixed_precision=fp16")


def test_fp16_loss_scale_is_saved_and_restored(tmp_path: Path) -> None:
    """The loss scaler's state (its scale after overflows) travels in the checkpoint's trainer state. fp16
    itself needs a GPU; torch's CPU scaler has the same state."""
    trainer = make_trainer(tmp_path, "scaled")
    trainer.dist.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    p = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([p], lr=0.1)
    trainer.dist.backward(p.sum())
    p.grad[0] = float("inf")  # an overflow: the step is skipped and the scale halves
    trainer.dist.step(optimizer)
    assert trainer.dist.scaler.get_scale() == 512.0
    state = json.loads(json.dumps(trainer.trainer_state(3)))  # as written to trainer_state.json

    resumed = make_trainer(tmp_path, "resumed")
    resumed.dist.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    resumed.restore_state(state)
    assert resumed.dist.scaler.get_scale() == 512.0


def test_vllm_backend_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"generation.backend=vllm needs .*(vllm package|CUDA GPU)"):
        make_trainer(tmp_path, "vllm", "generation.backend=vllm")
