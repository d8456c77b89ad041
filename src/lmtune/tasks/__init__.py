"""Tasks: one module per training objective behind the interface in tasks/base.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _classification(
    tokenizer: Any,
    cfg: Any,
    labels: list[str] | None,
    label_weights: list[float] | None,
    fmt: str | None,
) -> Any:
    from lmtune.tasks.classification import ClassificationTask

    return ClassificationTask(tokenizer, labels or [], cfg.model.max_length, label_weights)


def _sft(
    tokenizer: Any,
    cfg: Any,
    labels: list[str] | None,
    label_weights: list[float] | None,
    fmt: str | None,
) -> Any:
    from lmtune.tasks.sft import SFTTask

    return SFTTask(
        tokenizer, fmt or "text", cfg.model.max_length, cfg.data.template, cfg.data.packing
    )


def _preference(module: str, cls: str) -> Callable[..., Any]:
    def build(tokenizer: Any, cfg: Any, *_: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"lmtune.tasks.{module}"), cls)(tokenizer, cfg)

    return build


# The registry: add a task by adding a line here (modules import lazily, on first use).
TASKS: dict[str, Callable[..., Any]] = {
    "classification": _classification,
    "sft": _sft,
    "reward": _preference("reward", "RewardTask"),
    "dpo": _preference("dpo", "DPOTask"),
    "orpo": _preference("orpo", "ORPOTask"),
    "rlhf": _preference("rlhf", "RLHFTask"),
    "qa": _preference("qa", "QATask"),  # built like the preference tasks: (tokenizer, cfg)
}


def build_task(
    name: str,
    tokenizer: Any,
    cfg: Any,
    labels: list[str] | None = None,
    label_weights: list[float] | None = None,
    fmt: str | None = None,
) -> Any:
    """The task object for `name`, built from the TASKS registry."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name](tokenizer, cfg, labels, label_weights, fmt)
