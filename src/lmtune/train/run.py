"""`lmtune train`: prepare data, load model + adapter, run the loop, save, test.

This is the recipe layer (torchtune's recipes/): it wires library pieces together and owns
no logic of its own beyond the order of the steps.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config, dump_config
from lmtune.data.report import add_tokenize_section
from lmtune.runtime.dist import Dist
from lmtune.train.results import Finished, flat, write_results
from lmtune.train.tracking import Trackers, open_trackers, require_packages


def report_ragged_tail(cfg: Config, n_examples: int, run_dir: Path) -> None:
    """Say (console and data report) how many examples each epoch leaves out: the loop plans
    whole optimizer steps, so a tail smaller than one step is skipped every epoch."""
    from lmtune.data.report import ragged_tail_line

    dist = Dist.get()
    step_batch = cfg.train.batch_size * dist.world_size * cfg.train.grad_accum
    tail = n_examples % step_batch
    if not tail or n_examples < step_batch:
        return
    section = {"ragged_tail": tail, "examples": n_examples, "step_batch": step_batch}
    dist.print("train: " + ragged_tail_line(section))
    if dist.is_main:
        report = run_dir / "data_report.json"
        old = (
            json.loads(report.read_text(encoding="utf-8")).get("tokenize", {})
            if report.is_file()
            else {}
        )
        add_tokenize_section(run_dir, {**old, **section})


def setup(cfg: Config, run_dir: Path, for_training: bool = True) -> dict[str, Any]:
    """Tokenizer, prepared data, task and model with its adapter: everything train/eval need."""
    from transformers import set_seed

    from lmtune.data.trainset import prepare_cached
    from lmtune.models.adapters import apply_adapter, count_parameters
    from lmtune.models.load import load_model, load_tokenizer
    from lmtune.tasks import build_task, spec

    dist = Dist.get()
    set_seed(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model, for_training=for_training)
    # Every process prepares the same data (it is deterministic); only rank 0 keeps the files.
    data_dir = run_dir if dist.is_main else Path(tempfile.mkdtemp(prefix="lmtune-rank"))
    # From the data cache when this data, tokenizer and these settings were prepared before.
    prepared, data_plan = prepare_cached(cfg, tokenizer, data_dir)
    if spec(cfg.task).labelled and not prepared.labels:
        from lmtune.errors import UserError

        raise UserError(
            f"task {cfg.task} found no labels in the training data (check data.columns.label)"
        )
    task = build_task(
        cfg.task, tokenizer, cfg, prepared.labels, prepared.label_weights, prepared.format
    )
    task.observe_train(prepared.splits["train"])  # qa: are there unanswerable questions?
    set_seed(cfg.run.seed)  # the head's random init must not depend on how much data prep drew
    model = load_model(
        cfg.model,
        cfg.task,
        tokenizer,
        num_labels=len(prepared.labels or []) or None,
        labels=prepared.labels,
    )
    # A quantized base is prepared for k-bit training there (checkpointing when switched on).
    checkpointing = bool(getattr(cfg.train, "gradient_checkpointing", False))
    model = apply_adapter(model, cfg.adapter, cfg.task, gradient_checkpointing=checkpointing)
    trainable, total = count_parameters(model)
    dist.print(
        f"model {cfg.model.name_or_path}: {trainable:,} of {total:,} parameters trainable "
        f"({100 * trainable / max(total, 1):.2f}%, adapter {cfg.adapter.type})"
    )
    return {
        "tokenizer": tokenizer,
        "prepared": prepared,
        "data_dir": data_dir,
        "data_plan": data_plan,
        "task": task,
        "model": model,
        "params": {"trainable": trainable, "total": total},
    }


def model_meta(cfg: Config, prepared: Any) -> dict[str, Any]:
    """What a saved model needs to be used again without the config (labels, format, template)."""
    return {
        "task": cfg.task,
        "labels": prepared.labels,
        "format": prepared.format,
        "template": cfg.data.template,
        "max_length": cfg.model.max_length,
        "base_model": cfg.model.name_or_path,
        "adapter": cfg.adapter.type,
        "run_name": cfg.run.name,
        "pooling": cfg.model.pooling,
        # Preference/RL prompts given as message lists: generate renders a plain prompt
        # through the chat template too (templates.generation_prompt_ids).
        # One format per file: the first rows tell (never a scan of a million cached rows).
        "chat_prompts": any(
            isinstance(r.get("prompt"), list) for r in islice(prepared.splits["train"], 100)
        ),
        # A QLoRA adapter is reloaded on the same quantized base it was trained on.
        "quantization": cfg.model.quantization.model_dump() if cfg.model.quantization else None,
    }


def _train_features(
    cfg: Config, parts: dict[str, Any], run_dir: Path, resume: bool
) -> tuple[Any, Any]:
    """The encoded train split as the loop reads it, and the forgetting setup (or None).

    Encodes (Arrow, cached), adds forgetting's replay rows, lets the task pack or fill its
    reference log-probs (DPO/KTO full fine-tunes: computed once, cached for --resume).
    """
    from lmtune.data.trainset import encode_train
    from lmtune.evaluate.forgetting import forgetting_on
    from lmtune.models.adapters import head_module_names
    from lmtune.train.regularize import start_forgetting

    dist = Dist.get()
    task, model, tokenizer, prepared = (
        parts["task"],
        parts["model"],
        parts["tokenizer"],
        parts["prepared"],
    )
    # Arrow, memory-mapped: encoded once with data.num_proc workers, then cached.
    features = encode_train(
        cfg,
        task,
        tokenizer,
        prepared,
        parts["data_dir"],
        parts["data_plan"],
        run_dir / "rejects.jsonl" if dist.is_main else None,
    )
    forget = None
    if forgetting_on(cfg):  # the reference measured before training; L2-SP/EWC anchors; replay rows
        model.to(dist.device)
        forget = start_forgetting(
            cfg, model, tokenizer, head_module_names(model), len(features), dist.is_main
        )
        features = features + forget.replay
    if task.needs_reference:
        features = features.to_list()  # DPO/KTO fill reference log-probs into each feature
    n_rows = len(features)
    features = task.prepare_features(features)  # sft: packing
    if len(features) != n_rows:  # packed: the loop counts sequences, not rows
        _require_one_step(cfg, len(features), f"packed sequences (from {n_rows} rows)")
    report_ragged_tail(cfg, len(features), run_dir)
    _set_log_cadence(cfg, len(features))
    if task.needs_reference:
        model.to(dist.device)
    # DPO without an adapter to disable: reference log-probs of the still-untrained model,
    # computed once here (and cached in the run folder for --resume); a no-op for most tasks.
    held_out = [r for name in ("eval", "test") for r in prepared.splits.get(name) or []]
    task.prepare_reference(
        model, features, held_out, run_dir, cfg.train.eval_batch_size, resume=resume
    )
    return features, forget


def run_training(
    cfg: Config,
    resume: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The whole `lmtune train` run; returns the summary (also in RUN_DIR/summary.json).

    `on_eval(step, metrics)` goes to the loop (`lmtune tune` reports to its pruner there).
    `force` lets --resume accept the changes declared safe (train.state.SAFE_KEYS).
    """
    from lmtune.models.adapters import head_module_names
    from lmtune.models.export import save_model
    from lmtune.train.logging import describe_precision
    from lmtune.train.loop import TrainHooks, TrainInputs, train

    dist = Dist.get()
    run_dir = _open_run_dir(cfg, resume)
    parts = setup(cfg, run_dir)
    dist.print(describe_precision(cfg.train.precision, dist.device))
    task, model, tokenizer, prepared = (
        parts["task"],
        parts["model"],
        parts["tokenizer"],
        parts["prepared"],
    )
    meta = model_meta(cfg, prepared)
    if cfg.baselines.enabled:
        from lmtune.evaluate.baselines import check_label_maps

        check_label_maps(cfg.baselines, prepared.labels or [])  # fail now, not after training
    meta.update(task.model_meta())  # qa: decoding settings that eval/predict must reuse

    features, forget = _train_features(cfg, parts, run_dir, resume)
    eval_rows = prepared.splits.get("eval") or []
    before = _before_training(cfg, task, model, tokenizer, prepared, run_dir, resume)

    def saver(m: torch.nn.Module, out: Path, state_dict: dict | None = None) -> None:
        save_model(m, tokenizer, out, extra=meta, state_dict=state_dict)

    # TensorBoard/MLflow (tracking.*, off by default) on the main process; they get every
    # metrics.jsonl event, and are closed FAILED when anything below raises.
    trackers = open_trackers(cfg, run_dir, resume=resume) if dist.is_main else Trackers()
    with trackers:
        inputs = TrainInputs(
            cfg,
            task,
            model,
            features,
            eval_rows,
            run_dir,
            saver,
            head_names=head_module_names(model),
            regularizer=forget.regularizer if forget else None,
        )
        result = train(
            inputs, TrainHooks(resume, force, stop_after, quiet, on_eval, trackers.log_event)
        )
        if stop_after is not None and "interrupted_at" in result.summary:
            trackers.close("KILLED")  # what a kill here would leave: resumable
            return result.summary
        summary = {
            **result.summary,
            "trainable_params": parts["params"]["trainable"],
            "total_params": parts["params"]["total"],
            "eval_before": before,
            "data": {k: len(v) for k, v in prepared.splits.items()},
        }
        # FSDP: the whole weights onto rank 0 for model/, then gathered on every process so
        # rank 0 alone can run the steps below (collective; a no-op for none and ddp).
        full = result.engine.full_state_dict() if result.engine else None
        if result.engine:
            result.engine.unshard_all()
        if dist.is_main:
            done = Finished(cfg, run_dir, task, model, tokenizer, prepared, forget)
            summary = write_results(done, summary, meta, trackers, full)
    dist.barrier()
    return summary


def _open_run_dir(cfg: Config, resume: bool) -> Path:
    """The run folder with this run's config.yaml; a fresh run starts new logs."""
    from lmtune.train.output_dir import require_dir

    run_dir = require_dir(cfg.run.output_dir)
    require_packages(cfg.tracking)  # a missing tensorboard/mlflow fails now, not after data prep
    if Dist.get().is_main:
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        if not resume:
            for stale in ("metrics.jsonl", "rejects.jsonl", "samples.json"):
                (run_dir / stale).unlink(missing_ok=True)
    return run_dir


def _before_training(
    cfg: Config,
    task: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Any,
    run_dir: Path,
    resume: bool,
) -> dict[str, dict[str, float]] | None:
    """The untrained baseline on the held-out splits (for classification: the randomly
    initialised head), so the summary shows what training bought; the bias audit of the
    starting point; a causal model's answers to a few held-out prompts (samples.json). All
    on the main process of a fresh run only; returns the baseline."""
    dist = Dist.get()
    if resume or not dist.is_main:
        return None
    before = None
    if cfg.train.eval_before:
        model.to(dist.device)
        with torch.no_grad():
            before = {
                name: flat(task.evaluate(model, rows, cfg.train.eval_batch_size, None))
                for name in ("eval", "test")
                if (rows := prepared.splits.get(name))
            }
    if cfg.audit.enabled:
        from lmtune.evaluate.audit import audit_in_run

        model.to(dist.device)
        audit_in_run(cfg, "before", model, tokenizer, task, prepared, run_dir)
    from lmtune.evaluate.samples import samples_in_run

    # A few held-out prompts answered by the untrained model (causal tasks): samples.json.
    off = None if cfg.train.eval_before else "train.eval_before is off"
    samples_in_run(cfg, "before", model.to(dist.device), tokenizer, prepared, run_dir, off)
    return before


def _require_one_step(cfg: Config, n: int, what: str) -> None:
    """UserError when `n` training sequences make less than one optimizer step."""
    tc, world = cfg.train, Dist.get().world_size
    if n >= tc.batch_size * tc.grad_accum * world:
        return
    from lmtune.errors import UserError

    raise UserError(
        f"train split has {n} {what}: fewer than one optimizer step (batch_size "
        f"{tc.batch_size} x grad_accum {tc.grad_accum} x {world} process(es)); lower "
        "train.batch_size or train.grad_accum, or add data"
        + (", or turn data.packing off" if cfg.data.packing else "")
    )


def _set_log_cadence(cfg: Config, n: int) -> None:
    """A short run logs its loss often enough to draw a curve, unless train.log_every is set."""
    from lmtune.train.logging import auto_log_every

    tc = cfg.train
    if "log_every" in tc.model_fields_set:
        return
    per_epoch = n // (tc.batch_size * tc.grad_accum * Dist.get().world_size)
    total = tc.max_steps if tc.max_steps > 0 else max(1, round(tc.epochs * per_epoch))
    # Straight into the field: the saved config.yaml keeps the user's (unset) default.
    tc.__dict__["log_every"] = auto_log_every(total, tc.log_every)
