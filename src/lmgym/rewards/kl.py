"""KL-penalty coefficient controllers (Ziegler et al., 2019; RL4LMs' variant)."""

from __future__ import annotations

from lmgym.errors import InputError


class FixedKL:
    """β stays where it starts."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKL(FixedKL):
    """β moves so the measured KL tracks ``target``, once per iteration:

        e = clip(KL / target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)      Ziegler et al.: ``n_steps`` samples in this update
        β ← β · (1 + e · rate)                   with ``rate`` (RL4LMs: 0.1, whatever the batch size)

    The KL's unit (nats per sequence or per token) is the caller's: it must be the target's.
    """

    def __init__(self, coef: float, target: float, horizon: int, rate: float | None = None) -> None:
        super().__init__(coef)
        if target <= 0 or horizon <= 0:
            raise InputError("adaptive KL needs target > 0 and horizon > 0")
        if rate is not None and rate <= 0:
            raise InputError("adaptive KL: rate must be > 0")
        self.target = float(target)
        self.horizon = int(horizon)
        self.rate = rate

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * (self.rate if self.rate is not None else n_steps / self.horizon)


def make_kl_controller(
    kind: str, coef: float, target: float | None, horizon: int, rate: float | None = None
) -> FixedKL:
    if kind == "fixed":
        return FixedKL(coef)
    if kind == "adaptive":
        if target is None:
            raise InputError("kl.target is required when kl.controller is 'adaptive'")
        return AdaptiveKL(coef, target, horizon, rate)
    raise InputError(f"kl.controller must be 'fixed' or 'adaptive', got {kind!r}")
