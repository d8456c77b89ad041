"""Tasks: one module per training objective behind the interface in tasks/base.py."""

from __future__ import annotations

from typing import Any


def build_task(name: str, tokenizer: Any, cfg: Any, labels: list[str] | None = None,
               label_weights: list[float] | None = None, fmt: str | None = None) -> Any:
    """The task object for `name` (the registry: add a task by adding a line here)."""
    if name == "classification":
        from lmtune.tasks.classification import ClassificationTask

        return ClassificationTask(tokenizer, labels or [], cfg.model.max_length, label_weights)
    if name == "sft":
        from lmtune.tasks.sft import SFTTask

        return SFTTask(tokenizer, fmt or "text", cfg.model.max_length, cfg.data.template, cfg.data.packing)
    raise ValueError(f"unknown task {name!r}")
