"""The process group: one process, or several (torchrun, accelerate launch, `lmtune train --nproc`).

accelerate's PartialState reads the launcher's environment and sets up the process group
(gloo on CPU, nccl on GPU). Gradients are synchronised by the strategy's engine (DDP or
FSDP2, runtime/strategy.py), never here.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as td


class Dist:
    """Rank, world size, device and the few collectives the loop uses."""

    _instance: Dist | None = None

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world_size > 1:
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world_size, self.device = (
                state.process_index,
                state.num_processes,
                state.device,
            )
        else:
            self.rank = 0
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.is_main = self.rank == 0

    @classmethod
    def get(cls) -> Dist:
        """The process-wide instance (created on first use)."""
        if cls._instance is None:
            cls._instance = Dist()
        return cls._instance

    def shard(self, batch: list[int]) -> list[int]:
        """This process's contiguous share of a global batch."""
        if self.world_size == 1:
            return batch
        per = -(-len(batch) // self.world_size)
        return batch[self.rank * per : (self.rank + 1) * per]

    def all_sum(self, value: float) -> float:
        """Sum a float over processes."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        td.all_reduce(t)
        return float(t.item())

    def all_sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor summed over processes (a new tensor, detached; the input is unchanged)."""
        if self.world_size == 1:
            return t
        out = t.detach().clone()
        td.all_reduce(out)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Send a picklable object from rank 0 to all ranks."""
        if self.world_size == 1:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's picklable object, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            td.barrier()

    def print(self, msg: str) -> None:
        """Print once (on the main process)."""
        if self.is_main:
            print(msg, flush=True)

    def close(self) -> None:
        """End the process group cleanly (an abrupt exit can abort gloo at teardown)."""
        if self.world_size > 1 and td.is_initialized():
            td.barrier()
            td.destroy_process_group()
