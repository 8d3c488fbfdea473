"""Log-probabilities of the taken tokens and the entropies, from logits, without [N, V] temporaries.

`log_softmax` over a 49k vocabulary, a gather, then ``exp`` and a product for the entropy, each make a new
[N, V] tensor (and autograd keeps several of them for the backward pass), all streamed through memory. Here
each block of rows is reduced while it sits in cache: its log-normaliser, the taken token's log-probability
and the entropy, and the backward pass writes the logits' gradient in one pass per block:

    ∂ log p_a / ∂z_j = δ_aj − p_j            ∂H / ∂z_j = −p_j (log p_j + H)

Several outputs may share one row of logits (``rows``: a prompt's last position scores the first token of
each of its k completions), so packed passes (models/packing.py) need no [B, G, V] copy either.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK_ROWS = 16  # rows of logits reduced at a time: 16 × 49,152 floats = 3 MiB, within a core's L2 cache


def _normalisers(logits: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log Σ exp z and, with ``with_entropy``, H = lse − Σ p·z, per row, in float32; blocks of rows at a time."""
    n = logits.shape[0]
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    entropy = torch.empty(n, dtype=torch.float32, device=logits.device) if with_entropy else None
    for start in range(0, n, BLOCK_ROWS):
        z = logits[start : start + BLOCK_ROWS].float()
        block_lse = torch.logsumexp(z, dim=-1)
        lse[start : start + BLOCK_ROWS] = block_lse
        if entropy is not None:
            p = torch.exp(z - block_lse.unsqueeze(-1))
            entropy[start : start + BLOCK_ROWS] = block_lse - (p * z).sum(-1)
    return lse, entropy


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lse, entropy = _normalisers(logits, with_entropy)
        logprobs = logits[rows, tokens].float() - lse[rows]
        ctx.save_for_backward(logits, rows, tokens, lse, entropy if entropy is not None else lse)
        ctx.with_entropy = with_entropy
        if entropy is None:
            none = torch.zeros_like(logprobs)
            ctx.mark_non_differentiable(none)
            return logprobs, none
        return logprobs, entropy[rows]

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor, grad_entropy: torch.Tensor) -> tuple[Any, ...]:
        logits, rows, tokens, lse, entropy = ctx.saved_tensors
        n = logits.shape[0]
        if grad_logprobs is None:
            grad_logprobs = torch.zeros(rows.shape, dtype=torch.float32, device=logits.device)
        # Outputs that share a row of logits add their gradients.
        per_row_lp = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, grad_logprobs)
        per_row_h = None
        if ctx.with_entropy and grad_entropy is not None:
            per_row_h = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, grad_entropy)
        grad = torch.empty_like(logits)
        for start in range(0, n, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, n)
            out = grad[start:stop]  # written in place: −p·(Σ g_lp) − p·(log p + H)·(Σ g_H); + g_lp at the tokens below
            if per_row_h is None and logits.dtype == torch.float32:
                torch.sub(logits[start:stop], lse[start:stop].unsqueeze(-1), out=out)
                out.exp_().mul_(per_row_lp[start:stop].neg().unsqueeze(-1))
                continue
            logp = logits[start:stop].float() - lse[start:stop].unsqueeze(-1)
            p = torch.exp(logp)
            if per_row_h is None:  # a low-precision dtype without an entropy gradient: −p·(Σ g_lp)
                out.copy_(p.mul_(per_row_lp[start:stop].neg().unsqueeze(-1)))
                continue
            logp.add_(entropy[start:stop].unsqueeze(-1)).mul_(per_row_h[start:stop].unsqueeze(-1))
            out.copy_(logp.add_(per_row_lp[start:stop].unsqueeze(-1)).mul_(p).neg_())
        grad.index_put_((rows, tokens), grad_logprobs.to(grad.dtype), accumulate=True)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor | None = None, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(z)[token] and H[softmax(z)] (or None), float32, shaped like ``tokens``.

    ``logits`` [N, V] (any leading shape is flattened); ``rows``: the row of logits each token is scored by,
    shaped like ``tokens`` (default: one row per token, in order)."""
    flat = logits.reshape(-1, logits.shape[-1])
    if rows is None:
        rows = torch.arange(flat.shape[0], device=flat.device).reshape(tokens.shape)
    logprobs, entropy = _TokenLogprobs.apply(flat, rows.reshape(-1), tokens.reshape(-1), with_entropy)
    return logprobs.reshape(tokens.shape), entropy.reshape(tokens.shape) if with_entropy else None
