"""Sharded evaluation: each process scores its share of the eval rows; exact gathered metrics.

A task that can be sharded exactly implements two methods:
- `eval_partial(model, rows, batch_size)`: a picklable part for a share of the rows (sums
  and counts, or per-row predictions), never a mean;
- `eval_merge(parts, rows)`: the metrics from every process's part, in rank order (the
  shares are contiguous, so the concatenation is the rows' order).
So 2 processes report the numbers 1 process does (up to float summation order). A task
without them is evaluated on rank 0 alone and the result broadcast; under FSDP the weights
are gathered first, so rank 0 can run the model by itself.
"""

from __future__ import annotations

from typing import Any

import torch

from lmtune.runtime.strategy import Engine


def row_share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of process `rank`'s contiguous share of n rows (sizes differ by <= 1)."""
    base, rest = divmod(n, world_size)
    start = rank * base + min(rank, rest)
    return start, start + base + (1 if rank < rest else 0)


def can_shard(task: Any) -> bool:
    """Whether the task's evaluation splits exactly over processes."""
    return bool(task.shards_eval)


def evaluate_sharded(
    task: Any,
    engine: Engine,
    rows: list[dict[str, Any]],
    batch_size: int,
    dist: Any,
) -> dict[str, float] | None:
    """Metrics of the model on `rows`, identical on every process (collective).

    `dist` gives rank, world_size, all_gather and broadcast (train.dist.Dist).
    """
    model = getattr(engine.model, "_orig_mod", engine.model)
    result: dict[str, Any] | None = None
    with engine.gathered(), torch.no_grad():
        if can_shard(task) and dist.world_size > 1:
            start, end = row_share(len(rows), dist.rank, dist.world_size)
            part = task.eval_partial(model, rows[start:end], batch_size)
            result = task.eval_merge(dist.all_gather(part), rows)
        elif dist.is_main:
            result = task.evaluate(model, rows, batch_size, None)
        if not (can_shard(task) and dist.world_size > 1):
            result = dist.broadcast(result)
    return {k: float(v) for k, v in (result or {}).items() if isinstance(v, (int, float))}
