"""Loss terms several on-policy algorithms share (masked means over the generated tokens of a minibatch;
every tensor is [b, G] unless stated)."""

from __future__ import annotations

import torch

from lmgym.algos.advantages import masked_mean


def policy_gradient_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−E[A·log πθ(a|s)]: the plain policy gradient, no ratio, no clipping (A2C, REINFORCE, RLOO)."""
    return -masked_mean(advantages * logprobs, mask)


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(π_old ‖ πθ) over the unmasked tokens (a diagnostic, and PPO's early stop; no gradient)."""
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        return masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask)


def entropy_of(entropy: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy over the unmasked tokens; 0 when it was not computed (ent_coef = 0)."""
    return masked_mean(entropy, mask) if entropy is not None else torch.zeros(())


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """½·E[max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²)]; without ``clip``, ½·E[(V − R)²]."""
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)
