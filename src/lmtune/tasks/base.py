"""The one small interface every task implements; the training loop and `eval` know only this.

A task turns canonical rows into features, features into batches, batches into a summed
loss, and a model plus rows into metrics. Losses are returned as (sum, units) so the loop can
normalise by the true number of units (tokens for SFT, examples for classification) across
all micro-batches of an optimizer step and across processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch


class Task(Protocol):
    """What the loop needs from a task (structural: any object with these members works)."""

    name: str
    #: Metric used to pick the best checkpoint when the config keeps the default eval_loss.
    default_metric: tuple[str, str]

    def encode(self, row: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """Tokenize one canonical row into a feature dict (lists of ints plus 'length'), or a
        list of them when one row makes several (extractive QA: one per context window)."""
        ...

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad/pack features into a batch of tensors (includes 'num_units')."""
        ...

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss over the batch and the number of units it sums over."""
        ...

    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, float]:
        """Metrics on rows (eval_loss included); may write details (errors.jsonl) to out_dir."""
        ...
