"""KL-penalty coefficient controllers (Ziegler et al., 2019)."""

from __future__ import annotations


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
    """β moves so the measured KL tracks ``target``.

    error = clip(KL / target − 1, −0.2, 0.2);  β ← β · (1 + error · n_steps / horizon)
    where ``n_steps`` counts the samples seen in this update.
    """

    def __init__(self, coef: float, target: float, horizon: int) -> None:
        super().__init__(coef)
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kind: str, coef: float, target: float | None, horizon: int) -> FixedKL:
    if kind == "fixed":
        return FixedKL(coef)
    if kind == "adaptive":
        if target is None:
            raise ValueError("kl.target is required when kl.controller is 'adaptive'")
        return AdaptiveKL(coef, target, horizon)
    raise ValueError(f"kl.controller must be 'fixed' or 'adaptive', got {kind!r}")
