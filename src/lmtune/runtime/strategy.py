"""Strategies: how one model trains across processes, on torch.distributed's own engines.

- none: one process, the model as it is.
- ddp: torch.nn.parallel.DistributedDataParallel; a full replica per process, gradients
  averaged in buckets overlapped with backward, no sync on all but the last micro-batch of
  an optimizer step (no_sync).
- fsdp: FSDP2 (torch.distributed.fsdp.fully_shard) on every decoder/encoder block and on
  the root; weights, gradients and optimizer states are sharded over the processes.

Tasks call submodules of the model directly (the chunked LM head runs the decoder body and
then the head's weight, DPO's reference pass disables the LoRA adapter, RLHF generates), so
the engines do not wrap the model itself: they wrap a small `_Call` module that holds it and
whose forward runs the task's function on the model. DDP then prepares its reducer around the
whole task loss, and FSDP's root unshards everything outside the blocks (embeddings, head,
final norm) for the whole call, while each block gathers its own weights when it runs.
The task always receives the plain (peft / transformers) model.

Both engines AVERAGE gradients over processes. The loop divides the summed loss by the loss
units of the whole step on all processes (the exact full-batch mean), so the loss is
multiplied by `loss_scale` = world size to turn that average back into the sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch

from lmtune.errors import UserError
from lmtune.runtime.weights import base_of


class _Call(torch.nn.Module):
    """Holds the model; its forward runs `fn(model, *args)` (what DDP and FSDP wrap)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.module, *args)


def resolve_strategy(strategy: str, world_size: int) -> str:
    """The strategy a run uses: auto is none for one process and ddp for several."""
    if strategy == "auto":
        return "none" if world_size == 1 else "ddp"
    if strategy == "none" and world_size > 1:
        raise UserError(
            f"train.distributed.strategy=none runs one process, but {world_size} were launched; "
            "set train.distributed.strategy to ddp or fsdp (or auto), or launch one process"
        )
    return strategy


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (decoder/encoder layers), in order.

    transformers names them in `_no_split_modules`; without that, the members of the
    longest ModuleList holding parameters.
    """
    hf = base_of(model)
    names = set(getattr(hf, "_no_split_modules", None) or [])
    lists: list[torch.nn.ModuleList] = [
        m for m in hf.modules() if isinstance(m, torch.nn.ModuleList) and len(m)
    ]
    blocks = [b for ml in lists for b in ml if type(b).__name__ in names]
    if not blocks and lists:
        sizes = [len(ml) for ml in lists]
        blocks = list(lists[sizes.index(max(sizes))])
    return [b for b in blocks if any(True for _ in b.parameters())]


class Engine:
    """The model under a strategy: the loop's single way to run a task function on it."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        world_size: int,
        wrapper: torch.nn.Module | None = None,
    ) -> None:
        self.name = name
        self.model = model  # what tasks, optimizers and state dicts see
        self.world_size = world_size
        self.wrapper = wrapper
        # DDP and FSDP average gradients over processes; the loop's loss is a share of a sum.
        self.loss_scale = float(world_size) if name in ("ddp", "fsdp") else 1.0

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(model, *args)`, through the engine (DDP's reducer, FSDP's root) when there is one."""
        if self.wrapper is None:
            return fn(self.model, *args)
        return self.wrapper(fn, *args)

    def accumulating(self, last: bool) -> Any:
        """Context for one micro-batch: DDP skips its all-reduce unless it is the step's last.

        FSDP reduce-scatters every micro-batch, so gradients stay sharded between them.
        """
        if self.name == "ddp" and not last:
            assert self.wrapper is not None
            return cast(Any, self.wrapper).no_sync()
        return nullcontext()

    def _fsdp_modules(self) -> list[Any]:
        from torch.distributed.fsdp import FSDPModule

        assert self.wrapper is not None
        return [m for m in self.wrapper.modules() if isinstance(m, FSDPModule)]

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Every weight whole on every process inside (FSDP: all-gathered once, kept gathered),
        so each process may run the model alone, as many times as it likes (evaluation)."""
        if self.name != "fsdp":
            yield
            return
        self.unshard_all()
        try:
            yield
        finally:
            for m in self._fsdp_modules():
                m.set_reshard_after_forward(m is not self.wrapper, recurse=False)
            # Reshard everything and forget the forward order these evaluation forwards
            # recorded: FSDP prefetches in backward by that order, and processes that scored
            # different numbers of batches would otherwise issue mismatched collectives.
            cast(Any, self.wrapper).reset_iter_state()

    def unshard_all(self) -> None:
        """FSDP: gather every weight and stop resharding after forward (collective)."""
        if self.name != "fsdp":
            return
        for m in self._fsdp_modules():
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """FSDP: the whole model state on rank 0's CPU (collective; {} on other ranks).

        None for the other strategies: every process already holds the whole model.
        """
        if self.name != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return cast(
            dict[str, torch.Tensor],
            get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            ),
        )

    def trainable_state(self, full: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The trainable tensors by parameter name, whole, on the CPU (from `full` under FSDP)."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if full is None:
            params = dict(self.model.named_parameters())
            return {n: params[n].detach().contiguous().cpu() for n in names}
        return {n: full[n].contiguous() for n in names if n in full}

    def load_trainable(self, file: Path, is_main: bool) -> None:
        """Copy saved trainable tensors (a safetensors file) into the model (collective on FSDP)."""
        if self.name != "fsdp":
            from lmtune.runtime.weights import load_trainable

            load_trainable(self.model, file)
            return
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        # Rank 0 reads the file and broadcasts: other machines need not see it.
        weights = load_file(str(file)) if is_main else {}
        set_model_state_dict(
            self.model,
            cast(Any, weights),
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False),
        )


def build_engine(
    strategy: str,
    model: torch.nn.Module,
    world_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
    find_unused_parameters: bool = True,
) -> Engine:
    """Put `model` (already on `device`) under `strategy`; call before building the optimizer."""
    name = resolve_strategy(strategy, world_size)
    if name == "none":
        return Engine("none", model, world_size)
    if name == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapper = DistributedDataParallel(
            _Call(model),
            device_ids=[device.index] if device.type == "cuda" else None,
            # Buffers (rotary tables, position ids) are equal everywhere: no broadcast per step.
            broadcast_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )
        return Engine("ddp", model, world_size, wrapper)
    return Engine("fsdp", model, world_size, _fully_shard(model, amp_dtype, cpu_offload))


def _fully_shard(
    model: torch.nn.Module, amp_dtype: torch.dtype | None, cpu_offload: bool
) -> torch.nn.Module:
    """FSDP2 over every block, then the root (everything else: embeddings, head, norms)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise UserError(
            f"train.distributed.strategy=fsdp found no repeated blocks in {type(model).__name__} "
            "to shard; use train.distributed.strategy=ddp for this model"
        )
    kwargs: dict[str, Any] = {}
    if amp_dtype is not None:
        # Compute in bf16 (the precision asked for), reduce gradients in fp32.
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=amp_dtype, reduce_dtype=torch.float32
        )
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for block in blocks:
        fully_shard(block, reshard_after_forward=True, **kwargs)
    # transformers' generate() then keeps every process stepping until all are done
    # (synced_gpus), since each step all-gathers the blocks: RLHF rollouts of unequal length.
    for m in {model, base_of(model)}:
        m._is_fsdp_managed_module = True
    root = _Call(model)
    # The root stays gathered from forward to backward (it is needed again at once there).
    fully_shard(root, reshard_after_forward=False, **kwargs)
    return root


def engine_for(
    train_cfg: Any,
    model: torch.nn.Module,
    dist: Any,
    amp_dtype: torch.dtype | None,
    has_regularizer: bool = False,
) -> Engine:
    """The engine the config's `train.distributed` block asks for (the loop's one call)."""
    dc = train_cfg.distributed
    name = resolve_strategy(dc.strategy, dist.world_size)
    if name == "fsdp":
        # These read and write whole parameters by name outside a forward; sharded ones are not.
        for key, on in (
            ("train.average", train_cfg.average is not None),
            ("forgetting.mitigation (l2sp, ewc)", has_regularizer),
        ):
            if on:
                raise UserError(
                    f"{key} is not supported with train.distributed.strategy=fsdp yet; "
                    "use train.distributed.strategy=ddp, or switch it off"
                )
    if dc.cpu_offload and name != "fsdp":
        raise UserError(
            "train.distributed.cpu_offload needs train.distributed.strategy=fsdp "
            f"(the run uses {name}); set the strategy to fsdp or cpu_offload to false"
        )
    return build_engine(
        name,
        model,
        dist.world_size,
        dist.device,
        amp_dtype if train_cfg.precision == "bf16" else None,
        dc.cpu_offload,
        dc.find_unused_parameters,
    )
