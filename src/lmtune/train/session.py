"""One run of the training loop: its inputs, its hooks, and what its steps share.

`setup` builds the run (device, precision, the step plan's sizes, optimizer, schedule, weight
average, logs) and `start` gives the state to begin from: fresh, or the newest checkpoint's
after checking that it fits this run (train/state.py). loop.py reads top to bottom over them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config, TrainConfig
from lmtune.errors import UserError
from lmtune.runtime.dist import Dist
from lmtune.runtime.memory import enable_activation_checkpointing
from lmtune.runtime.strategy import Engine, engine_for
from lmtune.tasks.base import Task
from lmtune.train import checkpoint as ckpt
from lmtune.train.averaging import WeightAverage, averaging_start
from lmtune.train.logging import MetricsLog, Progress
from lmtune.train.optim import build_optimizer
from lmtune.train.precision import grad_scaler, restore_scaler
from lmtune.train.schedule import lr_lambda, param_groups, warmup_steps
from lmtune.train.sharded_ckpt import load_any
from lmtune.train.state import TrainState, check_resume, run_fingerprint

AVERAGE_FILE = "weight_average"  # CKPT/weight_average.safetensors: the running mean


@dataclass
class TrainInputs:
    """What a run trains (the recipe, train/run.py, builds it).

    `save_model(model, dir, state_dict)` writes a loadable model folder (used for best/).
    `regularizer(model)` is a penalty (L2-SP, EWC) added to each optimizer step's mean loss,
    logged as `penalty` beside the loss. `head_names` get train.head_lr.
    """

    cfg: Config
    task: Task
    model: torch.nn.Module
    train_features: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    run_dir: Path
    # save_model(model, folder, state_dict): state_dict is None, or under FSDP the whole weights.
    save_model: Callable[[torch.nn.Module, Path, dict[str, torch.Tensor] | None], None]
    head_names: list[str] = field(default_factory=list)
    regularizer: Callable[[torch.nn.Module], torch.Tensor] | None = None


@dataclass
class TrainHooks:
    """How the caller starts, steers and watches a run.

    `resume` continues from the newest checkpoint (`force`: accept the safe config changes,
    train.state.SAFE_KEYS). `stop_after` ends the run after that many optimizer steps as if
    killed (tests check that --resume reaches the same weights as an uninterrupted run).
    `on_eval(step, metrics)` is called after each evaluation once its checkpoint is saved; an
    exception it raises (a tuner pruning the trial) ends the run like a kill, logged.
    `on_log(event)` receives every event written to metrics.jsonl (experiment trackers).
    """

    resume: bool = False
    force: bool = False
    stop_after: int | None = None
    quiet: bool = False
    on_eval: Callable[[int, dict[str, float]], None] | None = None
    on_log: Callable[[dict[str, Any]], None] | None = None


@dataclass
class _Window:
    """Train-loss and step-metric sums since the last `train` log event."""

    loss: float = 0.0
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.extra[key] = self.extra.get(key, 0.0) + value

    def flush(self) -> dict[str, float]:
        """The window's means; starts a new window."""
        out = {"loss": self.loss / self.steps, **{k: v / self.steps for k, v in self.extra.items()}}
        self.loss, self.steps, self.extra = 0.0, 0, {}
        return out


@dataclass
class Run:
    """What the loop's functions share and nothing checkpoints (rebuilt on resume)."""

    inp: TrainInputs
    hooks: TrainHooks
    dist: Dist
    model: torch.nn.Module  # what forward runs (compiled when train.compile)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: torch.dtype | None
    eval_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    engine: Engine  # the strategy (none / DDP / FSDP2): forward, sync, gather, shards
    quantized: bool  # a 4/8-bit base (model.quantization): single-file checkpoints
    micro_global: int  # examples per micro-batch over all processes
    step_batch: int  # examples per optimizer step over all processes
    lengths: list[int]
    total_steps: int
    average: WeightAverage | None
    log: MetricsLog
    progress: Progress
    fingerprint: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    window: _Window = field(default_factory=_Window)
    t_start: float = 0.0
    last_loss: float = float("nan")
    stopped_early: bool = False

    @property
    def tc(self) -> TrainConfig:
        return self.inp.cfg.train

    @property
    def ckpt_root(self) -> Path:
        return self.inp.run_dir / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.inp.run_dir / "best"


def setup(inp: TrainInputs, hooks: TrainHooks) -> Run:
    """Device, precision, the step plan's sizes, optimizer, schedule, average, logs."""
    tc, dist = inp.cfg.train, Dist.get()
    model = inp.model
    model.to(dist.device)
    amp_dtype = resolve_precision(tc.precision, dist.device)
    # Evaluations pick the kept checkpoint: by default they run in fp32, as every later reading
    # of the saved weights does (eval, serve, test split), not under the training autocast.
    eval_dtype = amp_dtype if tc.eval_precision == "train" else None
    if tc.gradient_checkpointing:  # before compile: it changes how the blocks run
        enable_activation_checkpointing(model)
    if tc.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    # DDP / FSDP2 (train.distributed): FSDP shards the parameters in place, so before the
    # optimizer is built over them.
    engine = engine_for(tc, model, dist, amp_dtype, inp.regularizer is not None)
    # One optimizer step = grad_accum micro-batches x world_size processes.
    micro_global = tc.batch_size * dist.world_size
    step_batch = micro_global * tc.grad_accum
    steps_per_epoch = len(inp.train_features) // step_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"train split has {len(inp.train_features)} examples: fewer than one optimizer step "
            f"(batch_size {tc.batch_size} x grad_accum {tc.grad_accum} x {dist.world_size} "
            "process(es)); lower train.batch_size or train.grad_accum, or add data"
        )
    total_steps = (
        tc.max_steps if tc.max_steps > 0 else max(1, int(round(tc.epochs * steps_per_epoch)))
    )
    groups = param_groups(
        model, tc.weight_decay, tc.lr, tc.head_lr, inp.head_names, tc.layer_lr_decay
    )
    optimizer = build_optimizer(inp.cfg, groups, model)  # train.optimizer (train/optim.py)
    warm = warmup_steps(total_steps, tc.warmup_ratio, tc.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tc.scheduler, warm, total_steps)
    )
    average = None
    if tc.average is not None:
        # Parameter names of the unwrapped model throughout: torch.compile prefixes its own.
        start = averaging_start(tc.average.start, total_steps)
        average = WeightAverage(unwrap(model), start, tc.average.every, total_steps)
    return Run(
        inp=inp,
        hooks=hooks,
        dist=dist,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        amp_dtype=amp_dtype,
        eval_dtype=eval_dtype,
        scaler=grad_scaler(amp_dtype, dist.device),  # fp16 only: dynamic loss scaling
        engine=engine,
        quantized=inp.cfg.model.quantization is not None,
        micro_global=micro_global,
        step_batch=step_batch,
        # Arrow-backed features give the length column at once, without reading the rows.
        lengths=getattr(inp.train_features, "lengths", None)
        or [int(f["length"]) for f in inp.train_features],
        total_steps=total_steps,
        average=average,
        log=MetricsLog(inp.run_dir / "metrics.jsonl", enabled=dist.is_main, forward=hooks.on_log),
        progress=Progress(total_steps, enabled=dist.is_main and not hooks.quiet),
        fingerprint=run_fingerprint(inp.cfg, inp.task.name, dist.world_size, inp.train_features),
    )


def start(run: Run) -> TrainState:
    """A fresh state, or (--resume) the newest checkpoint's, after checking it fits this run."""
    fresh = TrainState(fingerprint=run.fingerprint)
    if not run.hooks.resume:
        return fresh
    if run.dist.is_main:
        for stale in ckpt.remove_stale(run.ckpt_root):
            print(f"removed {stale} (left by a run killed while writing it)", flush=True)
    run.dist.barrier()
    found = ckpt.list_checkpoints(run.ckpt_root)
    if not found:
        run.dist.print(f"--resume: no checkpoint in {run.ckpt_root}; starting from step 0")
        return fresh
    saved = ckpt.read_state(found[-1])
    forced = check_resume(saved.fingerprint, run.fingerprint, run.hooks.force, found[-1])
    # Sharded (torch.distributed.checkpoint, any process count) or the older single-file form.
    load_any(found[-1], run.model, run.optimizer, run.scheduler, run.dist.rank)
    restore_scaler(run.scaler, saved.scaler)
    if forced:
        _reschedule(run)
        run.dist.print(f"--force: resuming with changed {', '.join(forced)}")
    if not saved.fingerprint:
        run.dist.print(f"{found[-1]} predates config fingerprints: the config was not checked")
    if run.average is not None:
        saved_average = ckpt.load_extra(found[-1], AVERAGE_FILE)
        if saved_average is not None:
            run.average.load(saved_average, saved.average_count)
    run.dist.print(f"resumed from {found[-1]} (step {saved.step})")
    saved.fingerprint = run.fingerprint  # the next checkpoint records the run as it is now
    return saved


def _reschedule(run: Run) -> None:
    """After a forced resume: the configured learning rates, not the checkpoint's.

    The optimizer's and scheduler's state dicts carry the old peak rates; the schedule's
    shape (warmup, total steps) is the fresh lambda already. lr = peak x lambda(step), as
    LambdaLR computes it.
    """
    tc, sched = run.tc, run.scheduler
    fresh = param_groups(
        run.model, tc.weight_decay, tc.lr, tc.head_lr, run.inp.head_names, tc.layer_lr_decay
    )
    peaks: list[float | torch.Tensor] = [float(g.get("lr", tc.lr)) for g in fresh]
    lam = sched.lr_lambdas[0]
    for group, peak in zip(run.optimizer.param_groups, peaks, strict=True):
        group["initial_lr"] = peak
        group["lr"] = peak * lam(sched.last_epoch)
    sched.base_lrs = peaks
    sched._last_lr = [g["lr"] for g in run.optimizer.param_groups]  # what get_last_lr() shows


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast dtype or None for fp32; `auto` picks bf16 only where it is native."""
    if precision == "fp32":
        return None
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On CPUs without native bf16 (AVX512-BF16 / AMX), emulated bf16 is slower than fp32.
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if native else None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
