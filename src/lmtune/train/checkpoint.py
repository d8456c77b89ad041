"""Atomic, resumable checkpoints.

A checkpoint is a folder `checkpoints/step-000123/` holding the trainable weights
(safetensors), the optimizer + scheduler + RNG state (torch.save, read back with
weights_only=True so loading never unpickles arbitrary objects) and `state.json`. It is
written into a temporary folder and renamed into place, so a run killed mid-write never
leaves a half checkpoint that --resume would pick up.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmtune.atomic import atomic_dir
from lmtune.errors import UserError
from lmtune.runtime.weights import load_trainable
from lmtune.train.state import TrainState

CKPT_PREFIX = "step-"
# Left by a kill mid-write: atomic_dir's temporary/old folders, and save_sharded's .tmp-step-N.
_STALE = re.compile(r"\.step-\d+\.(tmp|old)-[0-9a-f]{8}|\.tmp-step-\d+")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (adapter + head, or everything for full)."""
    return {
        n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad
    }


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, in a form weights_only loading accepts."""
    # numpy's stubs type get_state() as dict | tuple whatever `legacy` says; legacy=True is a tuple.
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy": [np_state[0], np_state[1].tolist(), np_state[2], np_state[3], np_state[4]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1] or None))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    keep_last: int,
    protect: Path | None = None,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep_last` (and `protect`).

    `extra` maps a name to more tensors saved beside the weights as NAME.safetensors (the
    running weight average), read back with `load_extra`.
    """
    final = ckpt_root / f"{CKPT_PREFIX}{step:07d}"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
            },
            tmp / "trainer_state.pt",
        )
        for name, tensors in (extra or {}).items():
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        (tmp / "state.json").write_text(state.to_json())
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        if protect is None or old.resolve() != protect.resolve():
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)]
    found = [p for p in found if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX) :]))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns its state.json."""
    state = read_state(path)
    load_trainable(model, path / "trainable.safetensors")
    blob = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return state


def read_state(path: Path) -> TrainState:
    """Checkpoint `path`'s state.json (this version's, or mapped from an older one)."""
    file = path / "state.json"
    return TrainState.from_json(file.read_text(), file)


def remove_stale(ckpt_root: Path) -> list[Path]:
    """Delete the temporary folders a run killed mid-write left (lmtune.atomic names them
    `.step-NNNNNNN.tmp-XXXXXXXX` and `.step-NNNNNNN.old-XXXXXXXX`); returns what went."""
    if not ckpt_root.is_dir():
        return []
    stale = [p for p in ckpt_root.iterdir() if p.is_dir() and _STALE.fullmatch(p.name)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def assert_finite(
    model: torch.nn.Module | None, where: Path, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Refuse to write non-finite trainable weights to `where` (a diverged run).

    `tensors` (the whole weights gathered under FSDP) are checked instead of the model's
    parameters, which are then only this process's shards.
    """
    if tensors is not None:
        items = list(tensors.items())
    else:
        assert model is not None
        items = [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]
    bad = [n for n, t in items if not torch.isfinite(_local(t)).all()]
    if bad:
        raise UserError(
            f"not writing {where}: {len(bad)} trainable tensor(s) hold NaN or Inf (first: "
            f"{bad[0]}); training diverged: lower train.lr, use train.precision=fp32 or set "
            "train.max_grad_norm"
        )


def _local(t: torch.Tensor) -> torch.Tensor:
    # A DTensor (FSDP2 shard) checks its local part: no collective from one process alone.
    return t.to_local() if hasattr(t, "to_local") else t


def load_extra(path: Path, name: str) -> dict[str, torch.Tensor] | None:
    """The tensors save_checkpoint wrote as `extra[name]` into checkpoint `path`, if any."""
    file = path / f"{name}.safetensors"
    return load_file(str(file)) if file.is_file() else None
