"""What the guards keep (algos/guards.py `Rollback`): the state at the start of the running and of the previous
iteration, from at most one host copy of the trainable tensors, taken at an iteration's first change and kept
in buffers reused from one copy to the next."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from reliability_helpers import quiet, tiny_run

from lmgym.algos.guards import Rollback, restore_tensors
from lmgym.api import train
from lmgym.checkpoint import list_checkpoints
from lmgym.errors import TrainingError


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)  # frozen: not kept
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rollback: Rollback) -> None:
    optimizer.zero_grad()
    model(torch.randn(5, 4)).square().mean().backward()
    rollback.changing(model, optimizer, {})
    optimizer.step()


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    params = [p.detach().clone() for p in model.parameters()]
    moments = [v.clone() for s in optimizer.state.values() for v in s.values()]
    return params + moments


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_one_copy_serves_the_current_and_the_previous_iteration() -> None:
    model, optimizer = _model_and_optimizer()
    rollback = Rollback(copies=True)
    starts = {}
    for iteration in (1, 2, 3):
        rollback.begin(iteration, {"iteration": iteration - 1})
        starts[iteration] = _state(model, optimizer)
        before = rollback.current()
        # Before the iteration's first change the live tensors are its starting state: nothing to restore.
        assert before is not None and before.tensors is None and before.iteration == iteration - 1
        _train_step(model, optimizer, rollback)
        _train_step(model, optimizer, rollback)  # a second step keeps no second copy
    good = rollback.current()
    assert good.iteration == 2 and good.trainer_state == {"iteration": 2}
    kept = good.tensors
    # The copy holds only the trainable parameters (the frozen bias is left out) and their optimizer state.
    assert set(kept.params) == {"0.weight", "1.weight", "1.bias"}
    restore_tensors(kept, model, optimizer, {})
    assert _same(_state(model, optimizer), starts[3])
    # The next iteration's KL guard wants the start of iteration 3: the same copy (nothing changed since).
    rollback.begin(4, {"iteration": 3})
    previous = rollback.before_previous_update()
    assert previous is not None and previous.tensors is kept and previous.iteration == 2
    # The start of iteration 2 is gone: one copy only.
    assert rollback.state_at_end_of(1) is None


def test_the_copy_reuses_its_buffers() -> None:
    model, optimizer = _model_and_optimizer()
    rollback = Rollback(copies=True)
    pointers = []
    for iteration in (1, 2, 3, 4):
        rollback.begin(iteration, {})
        _train_step(model, optimizer, rollback)
        if iteration > 1:  # the optimizer state exists from the first step on
            kept = rollback.current().tensors
            pointers.append([t.data_ptr() for t in [*kept.params.values(), *kept.optimizer[0].values()]])
    assert pointers[0] == pointers[1] == pointers[2]


def test_on_a_cpu_each_tensor_is_copied_into_a_block_of_its_own() -> None:
    """Tensor-sized blocks, which the C heap fits into the holes the update's activations left, not one block
    of the whole state's size (algos/guards.py `KeptTensors`)."""
    model, optimizer = _model_and_optimizer()
    rollback = Rollback(copies=True)
    for iteration in (1, 2):
        rollback.begin(iteration, {})
        trainable = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        start = trainable + [v.clone() for state in optimizer.state.values() for v in state.values()]
        _train_step(model, optimizer, rollback)
    kept = rollback.current().tensors  # the start of iteration 2
    assert kept.buffer is None and len(kept.copies) == len(start)
    for copy, source in zip(kept.copies, start, strict=True):
        assert copy.untyped_storage().nbytes() == source.nbytes and torch.equal(copy, source)
    assert kept.nbytes == sum(s.nbytes for s in start)


def test_an_iteration_without_a_change_leaves_the_live_state_good() -> None:
    model, optimizer = _model_and_optimizer()
    rollback = Rollback(copies=False)
    rollback.begin(1, {"iteration": 0})
    _train_step(model, optimizer, rollback)
    rollback.begin(2, {"iteration": 1})  # iteration 2 takes no step (an early stop at its first minibatch)
    rollback.begin(3, {"iteration": 2})
    previous = rollback.before_previous_update()  # the start of iteration 2: the live tensors, no copy needed
    assert previous is not None and previous.tensors is None and previous.trainer_state == {"iteration": 1}
    _train_step(model, optimizer, rollback)
    assert rollback.current() is None  # changed, and no copy was kept (copies=False)


def test_restore_from_before_the_first_step_clears_the_optimizer_state() -> None:
    model, optimizer = _model_and_optimizer()
    start = [p.detach().clone() for p in model.parameters()]
    rollback = Rollback(copies=True)
    rollback.begin(1, {})
    _train_step(model, optimizer, rollback)
    restore_tensors(rollback.current().tensors, model, optimizer, {})
    assert _same([p.detach() for p in model.parameters()], start)
    assert not optimizer.state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_copies_from_a_gpu_are_pinned_host_tensors() -> None:
    model, _ = _model_and_optimizer()
    model = model.cuda()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    rollback = Rollback(copies=True)
    for iteration in (1, 2):
        rollback.begin(iteration, {})
        _train_step_cuda(model, optimizer, rollback)
    kept = rollback.current().tensors
    tensors = [*kept.params.values(), *kept.optimizer[0].values()]
    assert all(t.device.type == "cpu" and t.is_pinned() for t in tensors if t.dim() > 0)
    live = _state(model, optimizer)
    restore_tensors(kept, model, optimizer, {})
    assert not _same(_state(model, optimizer), live)


def _train_step_cuda(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rollback: Rollback) -> None:
    optimizer.zero_grad()
    model(torch.randn(5, 4, device="cuda")).square().mean().backward()
    rollback.changing(model, optimizer, {})
    optimizer.step()


def test_without_rollback_a_nan_reward_still_saves_the_unchanged_state(tmp_path: Path) -> None:
    """guards.rollback=false keeps no copy; a failure before its iteration's first step needs none."""
    from test_guards import NaNOnCall, same_weights, weights

    args = tiny_run(tmp_path, "no-copy", "iterations=6", "checkpoint.every=5", "guards.rollback=false")
    reward = NaNOnCall(bad_call=4, bad_sample=1)  # iteration 3's rollout
    with pytest.raises(TrainingError, match=r"^iteration 3: .*saved in"):
        train(None, args, reward=reward, console=quiet())
    run = tmp_path / "no-copy"
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [2]
    clean = train(None, tiny_run(tmp_path, "clean", "iterations=2", "checkpoint.every=5"), console=quiet())
    assert same_weights(weights(run, 2), weights(clean.run_dir, 2))


def test_without_rollback_a_nan_loss_after_a_step_names_the_newest_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from lmgym.algos import ppo

    calls = {"n": 0}
    original = ppo.PPOTrainer.policy_loss

    def poisoned(self, terms):
        loss, stats = original(self, terms)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 2 * 4 + 3 else loss), stats  # iteration 3, after two steps

    monkeypatch.setattr(ppo.PPOTrainer, "policy_loss", poisoned)
    args = tiny_run(tmp_path, "no-copy-loss", "iterations=6", "checkpoint.every=1", "guards.rollback=false")
    with pytest.raises(TrainingError, match=r"^iteration 3: the loss is nan .*No good state was kept in memory; the "):
        train(None, args, console=quiet())
    steps = [step for step, _ in list_checkpoints(tmp_path / "no-copy-loss" / "checkpoints")]
    assert steps == [1, 2]  # nothing rejected, nothing written: the periodic ones are the ones to resume from


def test_on_a_cpu_the_copy_is_freed_once_the_next_kl_guard_has_passed() -> None:
    """The copy of the start of iteration N−1 is needed until N's KL guard has passed; then (host memory being
    the training memory on a CPU) it is freed, and N's first step takes the next one."""
    model, optimizer = _model_and_optimizer()
    rollback = Rollback(copies=True)
    rollback.begin(1, {})
    _train_step(model, optimizer, rollback)
    rollback.begin(2, {})
    kept = rollback.before_previous_update().tensors
    assert kept is not None and not kept.pinned and kept.nbytes >= 4 * (12 + 3 + 1)
    rollback.release_previous()
    assert rollback.before_previous_update() is None
    assert rollback.current().tensors is None  # nothing changed yet in iteration 2: the live tensors
    _train_step(model, optimizer, rollback)
    assert rollback.current().tensors is not None
    rollback.release_previous()  # the copy of the running iteration's start stays
    assert rollback.current().tensors is not None
