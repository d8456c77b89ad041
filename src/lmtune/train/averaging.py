"""Weight averaging over the tail of training (SWA / checkpoint averaging).

Late in fine-tuning the weights keep moving around a region of good solutions and the eval
score of single snapshots swings by a point or more from one evaluation to the next (SST-2
dev: 89.0-90.5 every 500 steps). The running mean of snapshots taken every `every` steps
after `start` sits nearer the middle of that region and often generalises better than a
single snapshot (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"; Kaddour 2022,
LAWA). It is no sure win: on SST-2 with builtin:minilm the average did not beat the snapshot
that dev selected (README), which is why the loop keeps it only when it scores at least as
well. Only trainable tensors are averaged: the frozen base of a LoRA run does not move.

The mean is kept in float32 beside the model and goes into every checkpoint, so a killed
run resumes to the same average. At the end of training the loop evaluates the averaged
weights like any other candidate for best-model selection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lmtune.train.logging import MetricsLog
from lmtune.train.state import improved


def averaging_start(start: float, total_steps: int) -> int:
    """First step whose weights enter the mean: `start` is a fraction of the run's steps."""
    return min(total_steps, max(1, int(round(start * total_steps))))


class WeightAverage:
    """Running mean of the trainable weights, snapshot every `every` steps from `start_step`.

    The last step of the run is always included, so the mean never misses the end of
    training when total_steps is not a multiple of `every`.
    """

    def __init__(
        self, model: torch.nn.Module, start_step: int, every: int, total_steps: int
    ) -> None:
        self.start_step, self.every, self.total_steps = start_step, every, total_steps
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0

    def due(self, step: int) -> bool:
        """Whether the weights after optimizer step `step` enter the mean."""
        if step < self.start_step:
            return False
        return (step - self.start_step) % self.every == 0 or step == self.total_steps

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Add the model's current trainable weights to the mean."""
        params = dict(model.named_parameters())
        self.count += 1
        for name in self.names:
            value = params[name].detach().float()
            if name not in self.mean:
                self.mean[name] = value.clone()
            else:
                # Incremental mean: m += (x - m) / n keeps float32 error small for long runs.
                self.mean[name].add_(value - self.mean[name], alpha=1.0 / self.count)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The mean as contiguous CPU tensors (for safetensors)."""
        return {n: t.contiguous().cpu() for n, t in self.mean.items()}

    def load(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        """Restore a mean saved by `tensors()` after `count` snapshots (resume)."""
        unknown = sorted(set(tensors) - set(self.names))
        if unknown:
            raise RuntimeError(
                f"saved weight average has tensors this model does not train: {unknown[:3]}"
            )
        self.mean = {n: t.float().clone() for n, t in tensors.items()}
        self.count = count

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the body with the averaged weights in `model`; the trained ones come back after."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.mean}
        try:
            self.copy_into(model)
            yield
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)

    @torch.no_grad()
    def copy_into(self, model: torch.nn.Module) -> None:
        """Overwrite the model's trainable weights with the mean (in each parameter's dtype)."""
        params = dict(model.named_parameters())
        for n, t in self.mean.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def judge_average(
    average: WeightAverage,
    model: torch.nn.Module,
    run_eval: Callable[[], dict[str, float] | None],
    state: dict[str, Any],
    metric: str,
    mode: str,
    log: MetricsLog,
) -> dict[str, Any]:
    """Evaluate the averaged weights and decide whether they are the final model.

    Kept when there is no eval split (averaging was asked for and nothing says otherwise) or
    when the average scores at least as well as the best snapshot on the selection metric.
    The model's own weights are unchanged on return. `model` is the unwrapped model (the
    names the average keeps); `state` gives the run's step, epoch and best value so far.
    """
    with average.applied(model):
        metrics = run_eval()
    result: dict[str, Any] = {
        "snapshots": average.count,
        "from_step": average.start_step,
        "every": average.every,
        **(metrics or {}),
    }
    value = (metrics or {}).get(metric)
    best = state["best"]
    if value is None:
        kept = metrics is None
    else:
        kept = best is None or not improved(best, float(value), mode, 0.0)
    result["kept"] = kept
    # Logged like an evaluation (metrics.jsonl, trackers) under its own event name, so curves of
    # single snapshots stay separate from the average.
    entry = {"event": "eval_average", "step": state["step"], "epoch": state["epoch"], **result}
    log.write(entry)
    if metrics is not None:  # what summary.best_eval shows when the average is kept
        result["eval"] = {
            "event": "eval",
            "step": state["step"],
            "epoch": state["epoch"],
            **metrics,
            "weight_average": True,
        }
    return result
