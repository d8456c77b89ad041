"""The one training loop every task runs through: `train` below, read top to bottom.

Each epoch's optimizer steps are planned up front from a seeded order (so a resumed run sees
the same batches); each optimizer step sums the task loss over `grad_accum` micro-batches and
divides by the number of loss units (tokens or examples) in the whole step on every process;
gradients are all-reduced once per step, checked to be finite, clipped, and applied. An
evaluation (best-model tracking, early stopping), an atomic checkpoint and the log follow
the step; `finish` judges the weight average, puts the best model back and writes
summary.json. The state between steps is one `TrainState` (train/state.py), which is also a
checkpoint's state.json; what the steps share is one `Run` (train/session.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune.config import TrainConfig
from lmtune.errors import UserError
from lmtune.runtime.memory import steady_malloc
from lmtune.runtime.sharded_eval import evaluate_sharded
from lmtune.runtime.strategy import Engine
from lmtune.train import checkpoint as ckpt
from lmtune.train.averaging import judge_average as _judge_average
from lmtune.train.device_stats import device_summary
from lmtune.train.logging import MetricsLog, Progress, finite_json, peak_rss_mb
from lmtune.train.precision import apply_update, precision_name, scaled, scaler_state
from lmtune.train.session import (
    AVERAGE_FILE,
    Run,
    TrainHooks,
    TrainInputs,
    autocast,
    resolve_precision,
    setup,
    start,
    unwrap,
)
from lmtune.train.sharded_ckpt import save_sharded
from lmtune.train.state import TrainState, improved

__all__ = ["TrainHooks", "TrainInputs", "TrainResult", "plan_steps", "resolve_precision", "train"]


@dataclass
class TrainResult:
    """What `train` hands back (and writes to summary.json)."""

    summary: dict[str, Any]
    best_dir: Path | None
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    engine: Engine | None = None  # the strategy the model trained under (run.py saves through it)


def plan_steps(
    lengths: list[int], step_batch: int, seed: int, epoch: int, bucketing: bool
) -> list[list[int]]:
    """The examples of every optimizer step of one epoch: a function of (seed, epoch) only.

    Planning whole steps (not micro-batches) makes the plan independent of how a step is
    split into micro-batches and processes, which is what lets 4x2 equal 8x1 exactly.
    A ragged tail smaller than one step is dropped.
    """
    from lmtune.data.collate import LengthGroupedSampler

    if bucketing:
        order = list(LengthGroupedSampler(lengths, step_batch, seed=seed, epoch=epoch))
    else:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(lengths), generator=g).tolist()
    n = len(order) // step_batch
    return [order[i * step_batch : (i + 1) * step_batch] for i in range(n)]


def split_step(step: list[int], lengths: list[int], micro: int) -> list[list[int]]:
    """Split one step's examples into micro-batches of similar length (less padding)."""
    ordered = sorted(step, key=lambda i: lengths[i])
    return [ordered[i : i + micro] for i in range(0, len(ordered), micro)]


def train(inputs: TrainInputs, hooks: TrainHooks | None = None) -> TrainResult:
    """Train `inputs.model` on pre-encoded features; evaluate, checkpoint and keep the best."""
    run = setup(inputs, hooks or TrainHooks())
    state = start(run)
    cfg, tc = inputs.cfg, run.tc
    run.progress.start(state.step)
    run.t_start = time.perf_counter() - state.elapsed
    run.model.train()
    with steady_malloc():
        while state.step < run.total_steps and not run.stopped_early:
            # Plan the epoch: a seeded order of whole steps, the same for a resumed run.
            plan = plan_steps(
                run.lengths, run.step_batch, cfg.run.seed, state.epoch, cfg.data.bucketing
            )
            while True:
                epoch = state.epoch
                loss = optimizer_step(run, state, plan[state.step_in_epoch])
                end_of_epoch = state.advance(len(plan))
                _log_step(run, state, epoch, loss)
                done = state.step >= run.total_steps
                want_eval = _eval_due(tc, state.step, end_of_epoch, done)
                metrics = evaluate(run, state) if want_eval else None  # may stop early
                if _checkpoint_due(
                    tc, state.step, want_eval, end_of_epoch, done, run.stopped_early
                ):
                    checkpoint(run, state)
                if metrics is not None and run.hooks.on_eval is not None:
                    _notify(run.hooks.on_eval, state.step, metrics, run.log, run.progress)
                stop_after = run.hooks.stop_after
                if stop_after is not None and state.step >= stop_after and not done:
                    if not run.stopped_early:  # "killed" here (tests): the checkpoint stays
                        run.progress.stop()
                        return TrainResult({"interrupted_at": state.step}, None)
                if done or run.stopped_early or end_of_epoch:
                    break  # at an epoch's end the outer loop plans the next: a new shuffle
    run.progress.stop()
    return finish(run, state)


def _eval_due(tc: TrainConfig, step: int, end_of_epoch: bool, done: bool) -> bool:
    """Every train.eval_every steps, at each epoch's end (eval_each_epoch), and at the end."""
    return bool(
        (tc.eval_every and step % tc.eval_every == 0)
        or (end_of_epoch and tc.eval_each_epoch)
        or done
    )


def _checkpoint_due(
    tc: TrainConfig, step: int, evaluated: bool, end_of_epoch: bool, done: bool, stopping: bool
) -> bool:
    """Every train.save_every steps (default: with each evaluation), at each epoch's end, and
    when the run ends (last step or early stop)."""
    save_every = tc.save_every or tc.eval_every
    return bool(
        (save_every and step % save_every == 0)
        or (evaluated and not save_every)
        or end_of_epoch
        or done
        or stopping
    )


def optimizer_step(run: Run, state: TrainState, examples: list[int]) -> float:
    """One optimizer step over `examples` (the whole step, all processes); returns its mean loss.

    The loss is normalised by the loss units (tokens or examples) of the WHOLE step on ALL
    processes, so 4x2 == 8x1 and 2 processes == 1 process (the mean over tokens, not a mean
    of micro-batch means). Nothing is applied when the loss or the gradient is not finite.
    """
    task, dist, model = run.inp.task, run.dist, run.model
    task.begin_step(state.step)  # rlhf: a rollout's reuse is counted in optimizer steps
    feats = run.inp.train_features
    micro = [
        task.collate([feats[i] for i in dist.shard(b)])
        for b in split_step(examples, run.lengths, run.micro_global)
    ]
    units = dist.all_sum(sum(float(m["num_units"]) for m in micro))
    loss_sum, engine = 0.0, run.engine
    for i, m in enumerate(micro):
        m = {k: v.to(dist.device) if torch.is_tensor(v) else v for k, v in m.items()}
        # DDP syncs on the step's last micro-batch only; DDP/FSDP average over processes, so
        # engine.loss_scale (the world size) turns that average back into the exact sum.
        with engine.accumulating(last=i == len(micro) - 1):
            with autocast(dist.device, run.amp_dtype):
                loss, _ = engine.forward(task.loss, m)
            scaled(loss.float() * engine.loss_scale / units, run.scaler).backward()
        loss_sum += loss.item()
        state.tokens += int(m["num_tokens"])
        state.samples += int(m["num_examples"])
    if run.inp.regularizer is not None:
        # Once per optimizer step, not per micro-batch: the task loss above is already the
        # step's mean, so the objective is mean loss + penalty for any grad_accum. Every
        # process adds the same penalty's gradient after the engine averaged the task
        # gradients (outside its forward: no sync), so it counts once.
        penalty = run.inp.regularizer(unwrap(model))
        scaled(penalty, run.scaler).backward()
        run.window.add("penalty", float(penalty.detach()))
    step_loss = dist.all_sum(loss_sum) / units

    def guard(grad_norm: float) -> None:  # before the update: nothing non-finite is applied
        check_finite(run.tc, state.step + 1, step_loss, grad_norm)

    apply_update(run.optimizer, model, run.tc.max_grad_norm, run.scaler, guard)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.average is not None and run.average.due(state.step + 1):
        run.average.update(unwrap(model))
    return step_loss


def check_finite(tc: TrainConfig, step: int, loss: float, grad_norm: float) -> None:
    """Stop the run (exit 2) before a non-finite loss or gradient reaches the weights."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    raise UserError(
        f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm}. The update "
        "was not applied and nothing from this step was saved (checkpoints and best/ hold the "
        f"last finite weights). Lower train.lr (now {tc.lr}), train with train.precision=fp32 "
        f"(now {tc.precision}), or clip gradients with train.max_grad_norm "
        f"(now {tc.max_grad_norm}); then run again without --resume"
    )


def _log_step(run: Run, state: TrainState, epoch: int, loss: float) -> None:
    """Progress bar every step; a `train` event (window means) every train.log_every steps."""
    dist, step = run.dist, state.step
    run.window.loss += loss
    run.window.steps += 1
    for key, value in run.inp.task.step_metrics().items():
        run.window.add(key, dist.all_sum(value) / dist.world_size)  # the mean over processes
    run.last_loss = loss
    lr = float(run.scheduler.get_last_lr()[0])
    elapsed = time.perf_counter() - run.t_start
    tokens = state.tokens * dist.world_size
    run.progress.update(step, loss=loss, lr=lr, tokens=tokens, elapsed=elapsed)
    if step % run.tc.log_every == 0 or step == run.total_steps:
        means = run.window.flush()
        event = {"event": "train", "step": step, "epoch": epoch, "loss": means.pop("loss")}
        event.update({"lr": lr, "tokens": tokens, "elapsed_s": round(elapsed, 3), **means})
        run.log.write(event)


def evaluate(run: Run, state: TrainState) -> dict[str, float] | None:
    """Evaluate, log, keep best/ when better; early stopping sets run.stopped_early."""
    metrics = _eval_metrics(run)
    if metrics is None:
        return None
    tc, metric = run.tc, run.tc.early_stopping.metric
    if metric not in metrics:
        raise UserError(
            f"train.early_stopping.metric '{metric}' is not produced by task "
            f"{run.inp.task.name}; available: {', '.join(sorted(metrics))} (when only counts "
            "are available, no eval row could be encoded: check that eval rows fit "
            "model.max_length)"
        )
    entry = {"event": "eval", "step": state.step, "epoch": state.epoch, **metrics}
    run.history.append(entry)
    run.log.write(entry)
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    run.progress.note(f"step {state.step}: {shown}")
    value = float(metrics[metric])
    if improved(value, state.best, tc.early_stopping.mode, tc.early_stopping.min_delta):
        state.best, state.best_step, state.bad_evals = value, state.step, 0
        save_best(run)
    else:
        state.bad_evals += 1
    patience = tc.early_stopping.patience
    if patience is not None and state.bad_evals >= patience:
        run.stopped_early = True
        run.dist.print(
            f"early stopping at step {state.step}: {metric} did not improve for "
            f"{patience} evaluations"
        )
    return metrics


def _eval_metrics(run: Run) -> dict[str, float] | None:
    """The task's numeric eval metrics, the same on every process: each process scores its
    share of the rows where the task can merge shares exactly, else the main process all."""
    if not run.inp.eval_rows:
        return None
    run.model.eval()
    with autocast(run.dist.device, run.eval_dtype):
        result = evaluate_sharded(
            run.inp.task, run.engine, run.inp.eval_rows, run.tc.eval_batch_size, run.dist
        )
    run.model.train()
    return result


def save_best(run: Run) -> None:
    """The model as it is now becomes best/ (a loadable folder, written by the main process;
    under FSDP every process takes part in gathering the whole weights first)."""
    full = run.engine.full_state_dict()
    if run.dist.is_main:
        model = unwrap(run.model)
        trainable = run.engine.trainable_state(full)
        ckpt.assert_finite(model, run.best_dir, trainable)
        run.inp.save_model(model, run.best_dir, full)
        # The exact trainable tensors too, so the end of the run can reload the best.
        ckpt.save_file(trainable, str(run.best_dir / "trainable.safetensors"))


def checkpoint(run: Run, state: TrainState) -> None:
    """A checkpoint of this step, complete or absent: every process writes its shard of the
    weights and optimizer (torch.distributed.checkpoint), plus scheduler, RNG, state.json."""
    state.elapsed = time.perf_counter() - run.t_start
    state.scaler = scaler_state(run.scaler)
    extra = None
    if run.average is not None and run.average.count:
        state.average_count = run.average.count
        extra = {AVERAGE_FILE: run.average.tensors()}
    if run.quantized:  # bitsandbytes' 8-bit layers break DCP's state-dict walk: one file
        if run.dist.is_main:
            ckpt.save_checkpoint(
                run.ckpt_root,
                state.step,
                run.model,
                run.optimizer,
                run.scheduler,
                state,
                run.tc.keep_last,
                extra=extra,
            )
        run.dist.barrier()
        return
    save_sharded(
        run.ckpt_root,
        state.step,
        run.model,
        run.optimizer,
        run.scheduler,
        state.to_json(),
        run.tc.keep_last,
        run.dist.rank,
        extra,
    )


def finish(run: Run, state: TrainState) -> TrainResult:
    """Weight average, the best model back in place, summary.json."""
    runtime = time.perf_counter() - run.t_start
    metric = run.tc.early_stopping.metric
    average_result = _keep_average(run, state) if run.average and run.average.count else None
    # Keep the best model: reload its weights so what we save/evaluate next is the best one.
    best_path = None
    if (run.best_dir / "trainable.safetensors").is_file() and state.best_step is not None:
        best_path = run.best_dir
        if state.best_step != state.step:
            run.engine.load_trainable(run.best_dir / "trainable.safetensors", run.dist.is_main)
            run.dist.print(
                f"loaded the best model (step {state.best_step}, {metric}={state.best:.4f})"
            )
    world, dist = run.dist.world_size, run.dist
    summary: dict[str, Any] = {
        "train_runtime_s": round(runtime, 3),
        "train_steps": state.step,
        "train_samples": state.samples * world,
        "train_samples_per_s": round(state.samples * world / max(runtime, 1e-9), 3),
        "train_tokens_per_s": round(state.tokens * world / max(runtime, 1e-9), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "final_train_loss": run.last_loss,
        "best_metric": metric,
        "best_metric_value": state.best,
        "best_step": state.best_step,
        "best_checkpoint": str(best_path) if best_path else None,
        # The last entry of a step wins: the kept average is evaluated at the last step too.
        "best_eval": next((h for h in reversed(run.history) if h["step"] == state.best_step), None),
        "stopped_early": run.stopped_early,
        "world_size": world,
        "strategy": run.engine.name,
        "precision": precision_name(run.amp_dtype),
        "eval_precision": precision_name(run.eval_dtype),
    }
    mean_len = state.tokens / max(state.samples, 1)
    tokens_per_s = summary["train_tokens_per_s"]
    summary.update(device_summary(unwrap(run.model), tokens_per_s, mean_len, dist.device))
    if average_result is not None:
        summary["weight_average"] = {k: v for k, v in average_result.items() if k != "eval"}
    summary = finite_json(summary)
    if dist.is_main:
        (run.inp.run_dir / "summary.json").write_text(
            json.dumps(summary, indent=2, allow_nan=False)
        )
    return TrainResult(summary, best_path, run.stopped_early, run.history, run.engine)


def _keep_average(run: Run, state: TrainState) -> dict[str, Any]:
    """Judge the weight average; when kept, it becomes the model and best/."""
    assert run.average is not None
    tc = run.tc
    metric, mode = tc.early_stopping.metric, tc.early_stopping.mode
    result = _judge_average(
        run.average,
        unwrap(run.model),
        lambda: _eval_metrics(run),
        {"step": state.step, "epoch": state.epoch, "best": state.best},
        metric,
        mode,
        run.log,
    )
    if result["kept"]:
        # The average is the final model: it becomes "best" so nothing below reloads a snapshot.
        run.average.copy_into(unwrap(run.model))
        save_best(run)
        state.best, state.best_step = result.get(metric), state.step
        if "eval" in result:
            run.history.append(result["eval"])
        run.dist.print(
            f"kept the weight average of {run.average.count} snapshots ({metric}="
            f"{result.get(metric, float('nan')):.4f})"
        )
    return result


def _notify(
    on_eval: Callable[[int, dict[str, float]], None],
    step: int,
    metrics: dict[str, float],
    log: MetricsLog,
    progress: Progress,
) -> None:
    """Hand an evaluation to `on_eval`; if it stops the run, say so in metrics.jsonl first."""
    try:
        on_eval(step, metrics)
    except BaseException as exc:
        # Called after this step's checkpoint: the folder is what a kill here leaves (resumable),
        # and the log says why it ends, so a pruned trial does not look like a crash.
        log.write(
            {"event": "stopped", "step": step, "reason": type(exc).__name__, "detail": str(exc)}
        )
        progress.stop()
        raise
