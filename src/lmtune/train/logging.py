"""Run logging: metrics.jsonl events, what a person sees while a run trains, peak memory.

On a terminal a rich bar shows step, epoch, loss, lr, tokens/s, elapsed and remaining time.
With stdout not a terminal (nohup, Slurm, CI logs) a bar is invisible, so every logged step
becomes one plain line instead (step/total, epoch, loss, lr, tokens/s, elapsed, ETA), and
every evaluation one compact line (counts as integers) in both modes.
"""

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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
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
        if _SHOWN["progress"] is not None:
            _SHOWN["progress"].event(event)


#: The progress display of the running loop: MetricsLog shows it each event it writes, so the
#: console lines hold exactly the figures metrics.jsonl holds (one loop per process at a time).
_SHOWN: dict[str, Progress | None] = {"progress": None}


class Progress:
    """Progress of the training loop: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, enabled: bool = True, plain: bool | None = None) -> None:
        self.enabled = enabled
        # stdout decides: `lmtune train > log` and nohup want lines even if stderr is a tty.
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.console = Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "epoch {task.fields[epoch]} loss {task.fields[loss]:.4f} "
                "lr {task.fields[lr]:.2e} {task.fields[tps]:,.0f} tok/s"
            ),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled or self.plain,
        )
        self.total = total
        self.task_id: TaskID | None = None
        self._first_step = 0
        self._t0 = time.perf_counter()
        self._eval_step: int | None = None

    def start(self, step: int) -> None:
        """Begin at `step` (non-zero on resume)."""
        self._first_step = step
        self._t0 = time.perf_counter()
        self.bar.start()
        self.task_id = self.bar.add_task(
            "train", total=self.total, completed=step, loss=float("nan"), lr=0.0, tps=0.0, epoch=1
        )
        if self.enabled:
            _SHOWN["progress"] = self

    def update(self, step: int, loss: float, lr: float, tokens: int, elapsed: float) -> None:
        """Advance to `step` with the latest figures."""
        if self.task_id is None:
            return
        self.bar.update(
            self.task_id, completed=step, loss=loss, lr=lr, tps=tokens / max(elapsed, 1e-9)
        )

    def event(self, event: dict[str, Any]) -> None:
        """Show one metrics.jsonl event: train logs as plain lines, evaluations as one line."""
        if not self.enabled:
            return
        kind = event.get("event")
        if kind == "train":
            if self.task_id is not None:
                self.bar.update(self.task_id, epoch=int(event.get("epoch", 0)) + 1)
            if self.plain:
                print(self.train_line(event), flush=True)
        elif kind == "eval":
            self._eval_step = int(event.get("step", -1))
            self._print(eval_line(event, self.total))

    def train_line(self, event: dict[str, Any]) -> str:
        """`step 20/100 | epoch 1 | loss 0.6931 | lr 2.00e-04 | 812 tok/s | 0:12 | eta 0:48`."""
        step = int(event.get("step", 0))
        elapsed = float(event.get("elapsed_s", 0.0))
        done = step - self._first_step
        rate = (time.perf_counter() - self._t0) / done if done > 0 else None
        eta = duration(rate * (self.total - step)) if rate is not None else "?"
        parts = [
            f"step {step}/{self.total}",
            f"epoch {int(event.get('epoch', 0)) + 1}",
            f"loss {float(event.get('loss', float('nan'))):.4f}",
            f"lr {float(event.get('lr', 0.0)):.2e}",
            f"{float(event.get('tokens', 0)) / max(elapsed, 1e-9):,.0f} tok/s",
            f"elapsed {duration(elapsed)}",
            f"eta {eta}",
        ]
        extra = {k: v for k, v in event.items() if k not in TRAIN_KEYS}
        if extra:
            parts.append(metrics_text(extra))
        return " | ".join(parts)

    def note(self, text: str) -> None:
        """Print a line above the bar (evaluations, early stopping)."""
        # The loop also describes each evaluation in its own words; event() has shown it
        # already (compact, counts as integers), so that second description is dropped.
        if self._eval_step is not None and text.startswith(f"step {self._eval_step}:"):
            return
        self._print(text)

    def _print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.plain:
            print(text, flush=True)
        else:
            self.bar.console.print(text, highlight=False, markup=False)

    def stop(self) -> None:
        """Close the bar."""
        self.bar.stop()
        if _SHOWN["progress"] is self:
            _SHOWN["progress"] = None


#: Keys of a train event shown in their own place on the line (the rest are task measurements).
TRAIN_KEYS = ("event", "time", "step", "epoch", "loss", "lr", "tokens", "elapsed_s")


def metrics_text(metrics: dict[str, Any]) -> str:
    """`eval_loss 0.6931 accuracy 0.8125 eval_examples 64`: measurements, then counts."""
    from lmtune.report.collect import is_count

    shown = {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    measures = [f"{k} {float(v):.4f}" for k, v in shown.items() if not is_count(k)]
    counts = [
        f"{k} {int(v)}" if float(v).is_integer() else f"{k} {float(v):.1f}"
        for k, v in shown.items()
        if is_count(k)
    ]
    return " ".join(measures + counts)


def eval_line(event: dict[str, Any], total: int) -> str:
    """One line per evaluation: `eval step 20/100 | eval_loss 0.6931 accuracy 0.8125 | ...`."""
    metrics = {k: v for k, v in event.items() if k not in ("event", "time", "step", "epoch")}
    return f"eval step {event.get('step')}/{total} | {metrics_text(metrics)}"


def duration(seconds: float) -> str:
    """`0:07`, `12:05`, `1:02:03`: short, and sortable by eye in a log."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def auto_log_every(total_steps: int, log_every: int) -> int:
    """The log cadence for a run of `total_steps`: at most `log_every`, and small enough that
    a short run still logs about 20 points of its loss curve (every step below 20 steps)."""
    return max(1, min(log_every, total_steps // 20))


def describe_precision(precision: str, device: Any) -> str:
    """One line saying which precision training uses and why (what `auto` picked)."""
    from lmtune.train.loop import resolve_precision

    picked = "bf16 autocast" if resolve_precision(precision, device) is not None else "fp32"
    if precision != "auto":
        return f"precision: {picked} (train.precision {precision})"
    if device.type == "cuda":
        why = "the GPU supports bf16" if picked != "fp32" else "the GPU has no native bf16"
    elif picked != "fp32":
        why = "this CPU has native bf16 instructions (AVX512-BF16 or AMX)"
    else:
        why = "this CPU has no native bf16, where emulated bf16 is slower than fp32"
    return f"precision: {picked} (train.precision auto: {why}; set train.precision to choose)"
