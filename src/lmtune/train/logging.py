"""Run logging: metrics.jsonl events, a rich progress bar, peak memory."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so json.dumps(allow_nan=False)
    writes it: JSON has no NaN or Infinity, and a bare NaN breaks strict readers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON lines: every train log and eval event, with a wall-clock time.

    `forward(event)` also receives each written event (TensorBoard/MLflow: train/tracking.py),
    so the trackers see exactly what this file holds.
    """

    def __init__(
        self,
        path: Path,
        enabled: bool = True,
        forward: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path, self.enabled, self.forward = path, enabled, forward

    def write(self, event: dict[str, Any]) -> None:
        """Append one event (flushed at once so a killed run keeps its history)."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")
        if self.forward is not None:
            self.forward(event)


class Progress:
    """A rich progress bar with step, loss, lr, tokens/s and ETA."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} {task.fields[tps]:,.0f} tok/s"
            ),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.total = total
        self.task_id: TaskID | None = None
        self._first_step = 0
        self._first_tokens = 0

    def start(self, step: int) -> None:
        """Begin at `step` (non-zero on resume)."""
        self._first_step = step
        self.bar.start()
        self.task_id = self.bar.add_task(
            "train", total=self.total, completed=step, loss=float("nan"), lr=0.0, tps=0.0
        )

    def update(self, step: int, loss: float, lr: float, tokens: int, elapsed: float) -> None:
        """Advance to `step` with the latest figures."""
        if self.task_id is None:
            return
        self.bar.update(
            self.task_id, completed=step, loss=loss, lr=lr, tps=tokens / max(elapsed, 1e-9)
        )

    def note(self, text: str) -> None:
        """Print a line above the bar (evaluations, early stopping)."""
        if self.enabled:
            self.bar.console.print(text)

    def stop(self) -> None:
        """Close the bar."""
        self.bar.stop()
