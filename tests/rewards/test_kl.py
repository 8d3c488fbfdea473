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
