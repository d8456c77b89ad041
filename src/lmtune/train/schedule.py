"""Learning-rate schedules (warmup then linear/cosine/constant) and the AdamW param groups."""

from __future__ import annotations

import math
import re

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


# "encoder.layer.3.", "model.layers.3.", "transformer.h.3.", "blocks.3.": the block index.
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBED = ("embed", "wte.", "wpe.")


def layer_depths(names: list[str]) -> dict[str, int]:
    """Depth of each parameter: 0 for embeddings, i + 1 for block i, n_blocks + 1 for the rest.

    The rest is what sits above the last block: final norm, pooler, task or LM head.
    """
    blocks = {n: int(m.group(1)) for n in names if (m := _BLOCK.search(n))}
    top = max(blocks.values(), default=-1) + 2
    return {
        n: blocks[n] + 1 if n in blocks else 0 if any(e in n.lower() for e in _EMBED) else top
        for n in names
    }


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    lr: float,
    head_lr: float | None,
    head_names: list[str],
    layer_decay: float = 1.0,
) -> list[dict]:
    """AdamW groups: decay vs no-decay, a separate LR for a freshly initialised head, and
    layer-wise LR decay.

    With layer_decay d < 1, a parameter at depth k of K (layer_depths) gets lr * d ** (K - k):
    the lower layers, which hold the most general features, move least (ELECTRA's and BEiT's
    recipe for fine-tuning encoders).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = layer_depths([n for n, _ in named])
    top = max(depths.values(), default=0)
    groups: dict[tuple[bool, bool, int], list[torch.nn.Parameter]] = {}
    for name, p in named:
        low = name.lower()
        no_decay = p.ndim < 2 or any(k in low for k in _NO_DECAY)
        is_head = head_lr is not None and any(
            f".{h}." in f".{name}" or name.startswith(h) for h in head_names
        )
        depth = top if is_head or layer_decay == 1.0 else depths[name]
        groups.setdefault((no_decay, is_head, depth), []).append(p)
    out = []
    for (no_decay, is_head, depth), params in sorted(groups.items()):
        base = head_lr if is_head and head_lr is not None else lr
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": base * layer_decay ** (top - depth),
            }
        )
    return out
