"""The loop's state between optimizer steps: one typed, versioned object, saved as state.json.

A checkpoint's state.json is `TrainState` as JSON. Version 1 adds `version` and `fingerprint`
to the string-keyed dict that earlier releases wrote; such a file (no `version`) still loads,
its keys mapped one to one, and resumes without a config check (it has no fingerprint).
A file from a newer release, or one with keys this release does not know, is refused.

The fingerprint records what a checkpoint's numbers only make sense with (the model, the
adapter's shape, the task, how a step is cut into examples, the data): `check_resume`
compares it with the run about to resume and stops on any difference, naming each key with
both values. A few settings are declared safe to change on resume (learning rate, length,
cadences); `--resume --force` accepts those, never the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config
from lmtune.errors import UserError

STATE_VERSION = 1

# Settings a resumed run may change with --force: they change where the run goes next, not what
# the saved weights, optimizer moments or data position mean.
SAFE_KEYS = (
    "train.lr",
    "train.max_steps",
    "train.epochs",
    "train.eval_every",
    "train.eval_each_epoch",
    "train.save_every",
    "train.log_every",
)


@dataclass
class TrainState:
    """Where a run is: position in the data, best evaluation so far, counters, fingerprint."""

    version: int = STATE_VERSION
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0  # steps done in `epoch` (the data position within its plan)
    best: float | None = None  # best value of the selection metric so far
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    tokens: int = 0  # this process's tokens and examples trained on
    samples: int = 0
    elapsed: float = 0.0  # training seconds before this process started (resume)
    average_count: int = 0  # snapshots in the running weight average
    # fp16's GradScaler state (scale, growth tracker, factors): a resumed run must go on with
    # the scale it had learnt, not restart at 65536 and skip steps finding it again.
    scaler: dict[str, Any] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def advance(self, steps_in_epoch: int) -> bool:
        """Count one optimizer step; at the end of the epoch move to the next one.

        Returns True when this step ended the epoch.
        """
        self.step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch < steps_in_epoch:
            return False
        self.epoch += 1
        self.step_in_epoch = 0
        return True

    def to_json(self) -> str:
        """state.json's text (strict JSON: a non-finite best is written as null)."""
        data = dataclasses.asdict(self)
        if data["best"] is not None and not math.isfinite(data["best"]):
            data["best"] = None
        return json.dumps(data, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, where: Path) -> TrainState:
        """Read state.json: this version, or the unversioned dict of earlier releases."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise UserError(f"{where}: not a training state (expected a JSON object)")
        version = data.get("version", 0)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise UserError(
                f"{where}: checkpoint state version {version!r} is newer than this lmtune "
                f"understands ({STATE_VERSION}); resume with the release that wrote it, or start "
                "afresh without --resume"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)} in a version {version} checkpoint "
                "state; it was not written by this lmtune: start afresh without --resume"
            )
        # Version 0 (no `version` key) used the same names; the new fields take their defaults.
        data["version"] = STATE_VERSION
        return cls(**data)


def improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def data_fingerprint(features: list[dict[str, Any]]) -> str:
    """A hash of the encoded training examples (order, tokens, labels, lengths)."""
    known = getattr(features, "fingerprint", None)
    if isinstance(known, str):  # Arrow-backed features know theirs without being read
        return known
    h = hashlib.blake2b(digest_size=12)
    for f in features:
        for key in sorted(f):
            value = f[key]
            if torch.is_tensor(value):
                value = value.tolist()
            h.update(f"{key}={value!r};".encode())
        h.update(b"\n")
    return h.hexdigest()


def run_fingerprint(
    cfg: Config, task_name: str, world_size: int, features: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a checkpoint of this run only makes sense with, as flat dotted keys."""
    tc, ad = cfg.train, cfg.adapter
    shape: dict[str, Any] = {"adapter.type": ad.type}
    if ad.type in ("lora", "dora"):  # the other adapters have no rank or targets
        shape.update(
            {
                "adapter.r": ad.r,
                "adapter.alpha": ad.alpha,
                "adapter.target_modules": _plain(ad.target_modules),
            }
        )
    return {
        "model.name_or_path": cfg.model.name_or_path,
        **shape,
        "task": task_name,
        "train.batch_size": tc.batch_size,
        "train.grad_accum": tc.grad_accum,
        # With the two above: a resumed run may split the same step batch another way.
        "processes": world_size,
        "data": data_fingerprint(features),
        **{key: _plain(getattr(tc, key.split(".", 1)[1])) for key in SAFE_KEYS},
    }


def check_resume(saved: dict[str, Any], now: dict[str, Any], force: bool, where: Path) -> list[str]:
    """Stop (UserError) when the run differs from checkpoint `where` in a way it cannot resume.

    Returns the safe keys that changed (accepted because `force`); an empty `saved` (a
    checkpoint older than fingerprints) is not checked.
    """
    if not saved:
        return []
    changed = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if _same_step_batch(saved, now):
        # Sharded checkpoints reshard to any process count, and the data position depends on
        # the examples per optimizer step only: how a step is split may change.
        changed = [k for k in changed if k not in STEP_SPLIT]
    unsafe = [k for k in changed if k not in SAFE_KEYS]
    safe = [k for k in changed if k in SAFE_KEYS]
    if unsafe or (safe and not force):
        lines = [f"  {k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in changed]
        if unsafe:
            advice = (
                "these cannot change on resume: restore them, or start afresh without --resume "
                "(or with another run.output_dir)"
            )
            if safe:
                advice += f"; {', '.join(safe)} may change with --resume --force"
        else:
            advice = "add --force to resume with these changes (they are safe to change)"
        raise UserError(
            f"--resume: the run differs from checkpoint {where}:\n"
            + "\n".join(lines)
            + f"\n{advice}"
        )
    return safe


STEP_SPLIT = ("train.batch_size", "train.grad_accum", "processes")


def _same_step_batch(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether both runs take the same examples per optimizer step (batch x accum x processes)."""
    try:
        return math.prod(int(saved[k]) for k in STEP_SPLIT) == math.prod(
            int(now[k]) for k in STEP_SPLIT
        )
    except (KeyError, TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    """A config value as JSON gives it back (tuples become lists), so saved == now compares."""
    return json.loads(json.dumps(value))
