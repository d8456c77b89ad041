"""Weights read back into a live model (below train/: the strategies use it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def load_trainable(model: torch.nn.Module, file: Path) -> None:
    """Copy saved trainable tensors into `model` in place."""
    weights = load_file(str(file))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{file} has weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def base_of(model: Any) -> Any:
    """The transformers model under a peft wrapper (the model itself when there is none)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model
