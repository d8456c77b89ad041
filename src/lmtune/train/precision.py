"""Mixed precision for the loop: the autocast dtype, and fp16's dynamic loss scaling.

bf16 has fp32's exponent range, so its gradients need no scaling. fp16 (GPUs without bf16,
e.g. V100/T4) underflows small gradients to zero: torch.amp.GradScaler multiplies the loss by
a large factor before backward, divides the gradients by it before clipping and the step,
skips a step whose gradients overflowed and then lowers the factor (dynamic loss scaling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


def precision_name(dtype: torch.dtype | None) -> str:
    """bf16 / fp16 / fp32 for an autocast dtype (None: no autocast)."""
    return NAMES[dtype]


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast on device (CUDA or CPU), None for bf16 and fp32."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def scaled(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """The loss to call backward on: multiplied by the current scale under fp16."""
    return scaler.scale(loss) if scaler is not None else loss


def apply_update(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    max_grad_norm: float | None,
    scaler: torch.amp.GradScaler | None,
    check: Callable[[float], None] | None = None,
) -> float:
    """Clip (on the true, unscaled gradients) and step; returns the gradient norm.

    `check(norm)` runs before the update and may raise (the loop's divergence guard). Under
    fp16 an overflowing step is the scaler's to handle: it is skipped and the scale lowered
    (the scale grows again every 2000 good steps), so `check` then sees a norm of 0.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor norm over all shards
        norm = norm.full_tensor()
    if check is not None:
        check(float(norm) if scaler is None else 0.0)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return float(norm)


def scaler_state(scaler: torch.amp.GradScaler | None) -> dict[str, Any] | None:
    """The scaler's state as plain JSON numbers (for state.json); None without a scaler."""
    if scaler is None or not scaler.is_enabled():
        return None
    return {k: v.item() if torch.is_tensor(v) else v for k, v in scaler.state_dict().items()}


def restore_scaler(scaler: torch.amp.GradScaler | None, saved: dict[str, Any] | None) -> None:
    """Put a checkpoint's scaler state back (checkpoints without one keep the fresh scale)."""
    if scaler is not None and saved:
        scaler.load_state_dict(saved)
