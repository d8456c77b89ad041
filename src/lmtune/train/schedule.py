"""Learning-rate schedules (warmup then linear/cosine/constant) and the AdamW param groups."""

from __future__ import annotations

import math

import torch

# Parameters whose names contain these never get weight decay: decaying a bias or a norm
# gain towards zero only hurts (the usual AdamW practice of BERT, GPT-2 and Llama recipes).
_NO_DECAY = ("bias", "norm", "ln_", "layernorm", "layer_norm", "rmsnorm")


def lr_lambda(kind: str, warmup: int, total: int):
    """Multiplier of the peak LR at optimizer step `step` (0-based, before the step)."""

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    return fn


def warmup_steps(total: int, ratio: float, steps: int) -> int:
    """Warmup length: explicit steps win over the ratio."""
    return steps if steps > 0 else int(math.ceil(ratio * total))


def param_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, head_lr: float | None, head_names: list[str]
) -> list[dict]:
    """AdamW groups: decay vs no-decay, and a separate LR for a freshly initialised head."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        low = name.lower()
        no_decay = p.ndim < 2 or any(k in low for k in _NO_DECAY)
        is_head = head_lr is not None and any(f".{h}." in f".{name}" or name.startswith(h) for h in head_names)
        groups.setdefault((no_decay, is_head), []).append(p)
    out = []
    for (no_decay, is_head), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": head_lr if is_head else lr,
            }
        )
    return out
