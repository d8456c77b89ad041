"""Sharded, resumable checkpoints with torch.distributed.checkpoint (DCP).

`checkpoints/step-0000123/` holds:
- `.metadata` + `__R_0.distcp` ...: the trainable weights and the optimizer states, each
  process writing its own shard (FSDP: its slice; DDP: the replicas are deduplicated);
- `optimizer_groups.json`, `scheduler.json`, `state.json`: the small, plain parts;
- `rng-R.pt`: every RNG of process R (read back with weights_only=True);
- `NAME.safetensors`: extra tensors (the running weight average).

Only tensors go through DCP (it unpickles any other object it reads), so loading never
unpickles. A checkpoint is complete or absent: every process writes into `.tmp-step-...`,
and rank 0 renames it into place after all of them finished (state.json last), so a kill -9
at any moment leaves the previous checkpoint as the newest complete one. DCP reshards on
load, so a run saved by 2 processes resumes on 1 (or on 4) and the reverse. With several
machines, the run folder must be on a file system they share.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from lmtune.train.checkpoint import CKPT_PREFIX, list_checkpoints, rng_state, set_rng_state

_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# dcp.load already fails on a tensor the checkpoint lacks; the frozen ones are not in it.
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def _process_group_up() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _barrier() -> None:
    if _process_group_up():
        torch.distributed.barrier()


def _states(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], Any]:
    """(tensors for DCP, optimizer param_groups) of the model's trainable state."""
    model = getattr(model, "_orig_mod", model)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    return {"model": model_sd, "optim": optim_sd["state"]}, optim_sd["param_groups"]


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Without a process group DCP warns on every save and load that it assumes one process,
    which is what a one-process run means: not a line for the user's console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def save_sharded(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state_json: str,
    keep_last: int,
    rank: int,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint `step` from every process (collective) and keep the newest `keep_last`.

    `state_json` is the run's state (TrainState.to_json()), written last as state.json."""
    final = ckpt_root / f"{CKPT_PREFIX}{step:07d}"
    tmp = ckpt_root / f".tmp-{final.name}"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".tmp-*"):  # what a run killed mid-write left
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    tensors, groups = _states(model, optimizer)
    with _single_process_quiet():
        dcp.save(tensors, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    _barrier()  # every shard and RNG file is on disk
    if rank == 0:
        (tmp / "optimizer_groups.json").write_text(json.dumps(groups))
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        for name, extra_tensors in (extra or {}).items():
            save_file(extra_tensors, str(tmp / f"{name}.safetensors"))
        (tmp / "state.json").write_text(state_json)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (and its files) so a power cut keeps what the rename promised."""
    for f in path.iterdir() if path.name.startswith(".tmp-") else []:
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_sharded(path: Path) -> bool:
    """True for a checkpoint written by save_sharded (a DCP .metadata file)."""
    return (path / ".metadata").is_file()


def load_sharded(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path` on every process (collective),
    whatever the number of processes that wrote it; returns its state.json."""
    inner = getattr(model, "_orig_mod", model)
    tensors, _ = _states(inner, optimizer)  # the layout to fill: this run's shards
    with _single_process_quiet():
        dcp.load(tensors, checkpoint_id=str(path))
    groups = json.loads((path / "optimizer_groups.json").read_text())
    set_state_dict(
        inner,
        optimizer,
        model_state_dict=tensors["model"],
        optim_state_dict={"state": tensors["optim"], "param_groups": groups},
        options=_LOAD_OPTIONS,
    )
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    # Each process resumes its own RNG stream; one that did not exist before takes rank 0's.
    rng = path / f"rng-{rank}.pt"
    set_rng_state(torch.load(rng if rng.is_file() else path / "rng-0.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


def load_any(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> None:
    """Resume from a sharded checkpoint, or from one of the earlier single-file format
    (the caller reads state.json: train.checkpoint.read_state)."""
    if is_sharded(path):
        load_sharded(path, model, optimizer, scheduler, rank)
        return
    from lmtune.train.checkpoint import load_checkpoint

    load_checkpoint(path, model, optimizer, scheduler)
