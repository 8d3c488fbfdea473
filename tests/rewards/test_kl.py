"""KL-coefficient controllers: fixed, adaptive (Ziegler et al.), state and construction errors."""

from __future__ import annotations

import pytest

from lmgym.rewards.kl import AdaptiveKL, FixedKL, make_kl_controller


def test_fixed_kl_never_moves() -> None:
    ctl = FixedKL(0.05)
    for kl in (0.0, 3.0, 100.0, -5.0):
        ctl.update(kl, 64)
    assert ctl.value == 0.05
    assert ctl.state_dict() == {"value": 0.05}


def test_adaptive_kl_update_formula_with_clip() -> None:
    ctl = AdaptiveKL(0.1, target=4.0, horizon=100)
    # KL 5: error = 5/4 − 1 = 0.25 → clipped to 0.2; β = 0.1 · (1 + 0.2 · 10/100) = 0.102
    ctl.update(5.0, 10)
    assert ctl.value == pytest.approx(0.102, abs=1e-12)
    # KL 3: error = −0.25 → clipped to −0.2; β = 0.102 · (1 − 0.02) = 0.09996
    ctl.update(3.0, 10)
    assert ctl.value == pytest.approx(0.09996, abs=1e-12)
    # KL 4.4: error = 0.1 (inside the clip); β = 0.09996 · (1 + 0.1 · 50/100) = 0.104958
    ctl.update(4.4, 50)
    assert ctl.value == pytest.approx(0.104958, abs=1e-12)
    # KL 0: error = −1 → −0.2; β = 0.104958 · (1 − 0.2 · 100/100) = 0.0839664
    ctl.update(0.0, 100)
    assert ctl.value == pytest.approx(0.0839664, abs=1e-12)
    # KL on target: no change.
    ctl.update(4.0, 100)
    assert ctl.value == pytest.approx(0.0839664, abs=1e-12)


def test_adaptive_kl_grows_and_shrinks_monotonically() -> None:
    up, down = AdaptiveKL(1.0, 1.0, 10), AdaptiveKL(1.0, 1.0, 10)
    for _ in range(5):
        up.update(50.0, 1)
        down.update(0.01, 1)
    assert up.value == pytest.approx(1.02**5)
    assert down.value == pytest.approx(0.98**5)


def test_state_dict_round_trip() -> None:
    ctl = AdaptiveKL(0.2, target=6.0, horizon=1000)
    ctl.update(12.0, 300)
    ctl.update(1.0, 200)
    state = ctl.state_dict()
    fresh = AdaptiveKL(0.2, target=6.0, horizon=1000)
    assert fresh.value != ctl.value
    fresh.load_state_dict(state)
    assert fresh.value == ctl.value
    # Both continue identically.
    ctl.update(7.0, 50)
    fresh.update(7.0, 50)
    assert fresh.value == ctl.value

    fixed = FixedKL(0.0)
    fixed.load_state_dict({"value": 0.3})
    assert fixed.value == 0.3


def test_make_kl_controller() -> None:
    fixed = make_kl_controller("fixed", 0.3, None, 10)
    assert type(fixed) is FixedKL and fixed.value == 0.3
    adaptive = make_kl_controller("adaptive", 0.1, 2.0, 500)
    assert isinstance(adaptive, AdaptiveKL)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.1, 2.0, 500)
    with pytest.raises(ValueError, match=r"kl\.target"):
        make_kl_controller("adaptive", 0.1, None, 500)
    with pytest.raises(ValueError, match=r"'fixed' or 'adaptive'.*'linear'"):
        make_kl_controller("linear", 0.1, 1.0, 500)
    with pytest.raises(ValueError, match="target > 0"):
        make_kl_controller("adaptive", 0.1, 0.0, 500)
    with pytest.raises(ValueError, match="horizon > 0"):
        AdaptiveKL(0.1, 1.0, 0)


def test_rl4lms_rule_with_a_fixed_rate() -> None:
    """RL4LMs (GRUE): once per rollout, e = clip((KL − target)/target, ±0.2) and β ← β·(1 + 0.1·e), the KL
    being the mean per generated token, whatever the batch size (n_steps is ignored)."""
    ctl = make_kl_controller("adaptive", 0.1, 0.1, horizon=10_000, rate=0.1)
    beta = 0.1
    for kl, n_steps in ((0.05, 1280), (0.3, 64), (0.12, 1), (0.1, 5000), (0.0, 1280), (0.108, 1280)):
        ctl.update(kl, n_steps)
        e = min(max((kl - 0.1) / 0.1, -0.2), 0.2)  # RL4LMs: diff_to_target clipped
        beta = beta * (1 + 0.1 * e)
        assert ctl.value == pytest.approx(beta, rel=1e-12)
    # by hand: e = −0.2 (clipped from −0.5), +0.2 (from 2), +0.2, 0, −0.2 (from −1), +0.08
    assert ctl.value == pytest.approx(0.1 * 0.98 * 1.02 * 1.02 * 1.0 * 0.98 * 1.008, rel=1e-12)


def test_trainer_steers_on_the_configured_kl_unit(tmp_path) -> None:
    """kl.per=token: the controller sees the mean KL per generated token (RL4LMs); per=sequence: the KL summed
    over each completion, averaged over the batch (Ziegler et al.)."""
    import io

    from rich.console import Console

    from lmgym.algos import get_trainer
    from lmgym.config import load_config

    for per in ("token", "sequence"):
        config = load_config(None, [
            "task=toy", "model=tiny", "threads=1", f"run_dir={tmp_path}", f"name={per}", "rollout.batch_size=8",
            "ppo.minibatch_size=8", "ppo.lr=1e-2", "kl.controller=adaptive", "kl.coef=0.1", "kl.target=0.001",
            f"kl.per={per}", "kl.update_rate=0.1", "eval.num_prompts=2",
        ])  # fmt: skip
        trainer = get_trainer("ppo")(config, console=Console(file=io.StringIO()))
        seen: list[tuple[float, int]] = []

        def recording_update(kl: float, n: int, update=trainer.kl_ctl.update, seen=seen) -> None:
            seen.append((kl, n))
            update(kl, n)

        trainer.kl_ctl.update = recording_update
        trainer.step(1)
        record = trainer.step(2)  # after one update the policy has moved: KL > 0
        assert record["kl"] > record["kl_per_token"] > 0  # a completion has several tokens
        assert seen[-1] == (record["kl_per_token"] if per == "token" else record["kl"], 8)
