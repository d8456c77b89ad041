"""The `train.distributed` config block: how a run uses several processes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmtune.config_base import Strict

StrategyName = Literal["auto", "none", "ddp", "fsdp"]


class DistributedConfig(Strict):
    """How the model is spread over processes (torch.distributed DDP or FSDP2)."""

    strategy: StrategyName = Field(
        "auto",
        description="auto: none for one process, ddp for several; none: one process only; ddp: a full replica per process, gradients averaged by DistributedDataParallel; fsdp: weights, gradients and optimizer states sharded over processes (FSDP2 fully_shard on every block and the root).",
    )
    cpu_offload: bool = Field(
        False,
        description="fsdp only: keep the sharded parameters, gradients and optimizer states in CPU memory (FSDP2 CPUOffloadPolicy); slower, for models that do not fit the devices.",
    )
    find_unused_parameters: bool = Field(
        True,
        description="ddp only: tolerate trainable parameters that a step leaves unused (a pooler, an unused head); False saves a graph walk per step when every one is used.",
    )
