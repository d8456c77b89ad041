"""Per-sequence log-probabilities of response tokens from logits at the response positions only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def sequence_logps(
    logits: torch.Tensor, targets: torch.Tensor, seq_index: torch.Tensor, num_seqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(target) per sequence, number of target tokens per sequence).

    logits [N, V] are the model's logits at the N positions that predict a response token
    (already selected: prompt and padding positions never reach the vocabulary softmax),
    targets [N] those tokens, seq_index [N] the sequence each belongs to. The fp32 upcast
    happens here, on N rows only.
    """
    return sequence_sums(
        -F.cross_entropy(logits.float(), targets, reduction="none"), seq_index, num_seqs
    )


def sequence_sums(
    values: torch.Tensor, seq_index: torch.Tensor, num_seqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-token values of each sequence, its token count); seq_index [N] names
    the sequence of every value."""
    sums = torch.zeros(num_seqs, dtype=values.dtype, device=values.device).index_add(
        0, seq_index, values
    )
    counts = torch.zeros(num_seqs, dtype=values.dtype, device=values.device).index_add(
        0, seq_index, torch.ones_like(values)
    )
    return sums, counts


class _ChunkedLinearLogp(torch.autograd.Function):
    """log p(target) = (h W^T + b)[target] - logsumexp(h W^T + b), chunk by chunk.

    Only one [chunk, vocab] block of logits exists at a time, in forward and in backward
    (which recomputes it: one extra head matmul buys never holding [N, vocab]). The gradient
    of log p w.r.t. the logits is onehot(target) - softmax, scaled by the upstream gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = _autocast_state(hidden.device.type)
        logps, preds = [], []
        for i in range(0, hidden.shape[0], chunk):
            logits = _logits(hidden[i : i + chunk], weight, bias, autocast)
            tgt = targets[i : i + chunk]
            logps.append(logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=1))
            preds.append(logits.argmax(1))
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.autocast = chunk, autocast
        pred = torch.cat(preds) if preds else targets.new_empty(0)
        ctx.mark_non_differentiable(pred)
        out = torch.cat(logps) if logps else hidden.new_empty(0, dtype=torch.float32)
        return out, pred

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, _grad_pred: Any) -> tuple[Any, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        grad_h = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        grad_b = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            if bias is not None and ctx.needs_input_grad[2]
            else None
        )
        for i in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[i : i + ctx.chunk]
            with torch.no_grad():
                logits = _logits(h, weight, bias, ctx.autocast)
                # d logp / d logits = onehot - softmax, times the upstream gradient (per row).
                g = torch.softmax(logits, dim=1).mul_(-grad_logp[i : i + ctx.chunk, None])
                g.scatter_add_(
                    1, targets[i : i + ctx.chunk, None], grad_logp[i : i + ctx.chunk, None]
                )
                if grad_h is not None:
                    grad_h[i : i + ctx.chunk] = (g @ weight.float()).to(hidden.dtype)
                if grad_w is not None:
                    grad_w.addmm_(g.t(), h.float())
                if grad_b is not None:
                    grad_b.add_(g.sum(0))
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
        )


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    if device_type not in ("cpu", "cuda"):
        return device_type, False, torch.float32
    return (
        device_type,
        torch.is_autocast_enabled(device_type),
        torch.get_autocast_dtype(device_type),
    )


def _logits(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    autocast: tuple[str, bool, torch.dtype],
) -> torch.Tensor:
    """One chunk's logits in fp32 (the head matmul itself under the caller's autocast)."""
    device_type, enabled, dtype = autocast
    with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled):
        return F.linear(h, weight, bias).float()


def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), argmax) per row of hidden [N, D] under the LM head (weight [V, D], bias),
    without materialising the [N, V] logits: at most [chunk, V] at a time, forward and backward.

    Equal to log_softmax(hidden @ weight.T + bias)[target] (tested to 1e-6 with gradients);
    the argmax (next-token accuracy) comes free and carries no gradient.
    """
    return _ChunkedLinearLogp.apply(hidden, weight, bias, targets, chunk)
