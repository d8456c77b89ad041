"""`lmtune train`: prepare data, load model + adapter, run the loop, save, test.

This is the recipe layer (torchtune's recipes/): it wires library pieces together and owns
no logic of its own beyond the order of the steps.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config, dump_config
from lmtune.tasks.base import Task
from lmtune.train.dist import Dist
from lmtune.train.tracking import Trackers, open_trackers, require_packages


def text_length_fn(tokenizer: Any):
    """Token count of a canonical row's text fields (for the data report's length stats)."""

    def fn(row: dict[str, Any]) -> int:
        if "messages" in row:
            parts = [m["content"] for m in row["messages"]]
        elif "prompt" in row:  # a prompt with its (longest) response(s), or a prompt alone
            parts = [_joined(row["prompt"])]
            responses = [_joined(row[k]) for k in ("chosen", "rejected", "completion") if k in row]
            parts += [max(responses, key=len)] if responses else []
        else:
            parts = [
                row[k]
                for k in (
                    "text",
                    "text_pair",
                    "instruction",
                    "input",
                    "output",
                    "question",
                    "context",
                )
                if row.get(k)
            ]
        return len(tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"])

    return fn


def _joined(value: str | list[dict[str, str]]) -> str:
    return " ".join(m["content"] for m in value) if isinstance(value, list) else value


def encode_rows(
    task: Task, rows: list[dict[str, Any]], rejects_path: Path | None
) -> list[dict[str, Any]]:
    """Encode rows; rows the task cannot encode (no room for a response) are rejected, not lost."""
    feats, rejected = [], []
    for row in rows:
        try:
            feat = task.encode(row)
        except ValueError as exc:
            rejected.append(
                {
                    "source": row.get("_source"),
                    "reason": str(exc),
                    "stage": "tokenize",
                    "row": {k: v for k, v in row.items() if not k.startswith("_")},
                }
            )
            continue
        if isinstance(feat, list):  # qa: one row -> one feature per window of a long context
            feats.extend(feat)
        else:
            feats.append(feat)
    if rejected and rejects_path is not None:
        with rejects_path.open("a", encoding="utf-8") as f:
            for r in rejected:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    if rejected:
        Dist.get().print(f"{len(rejected)} row(s) rejected at tokenization (see {rejects_path})")
    if rows and not feats:
        from lmtune.errors import UserError

        raise UserError(
            f"all {len(rows)} rows were rejected at tokenization, e.g. "
            f"{rejected[0]['source']}: {rejected[0]['reason']}; raise model.max_length "
            "or shorten the prompts"
        )
    return feats


def setup(cfg: Config, run_dir: Path, for_training: bool = True) -> dict[str, Any]:
    """Tokenizer, prepared data, task and model with its adapter: everything train/eval need."""
    from transformers import set_seed

    from lmtune.data.pipeline import prepare_data
    from lmtune.models.adapters import apply_adapter, count_parameters
    from lmtune.models.load import load_model, load_tokenizer
    from lmtune.tasks import build_task, spec

    dist = Dist.get()
    set_seed(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model, for_training=for_training)
    # Every process prepares the same data (it is deterministic); only rank 0 keeps the files.
    data_dir = run_dir if dist.is_main else Path(tempfile.mkdtemp(prefix="lmtune-rank"))
    prepared = prepare_data(cfg, data_dir, length_fn=text_length_fn(tokenizer))
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
    model = apply_adapter(model, cfg.adapter, cfg.task)
    trainable, total = count_parameters(model)
    dist.print(
        f"model {cfg.model.name_or_path}: {trainable:,} of {total:,} parameters trainable "
        f"({100 * trainable / max(total, 1):.2f}%, adapter {cfg.adapter.type})"
    )
    return {
        "tokenizer": tokenizer,
        "prepared": prepared,
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
    }


def run_training(
    cfg: Config,
    resume: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """The whole `lmtune train` run; returns the summary (also in RUN_DIR/summary.json).

    `on_eval(step, metrics)` goes to the loop (`lmtune tune` reports to its pruner there).
    """
    from lmtune.evaluate.forgetting import forgetting_on
    from lmtune.models.adapters import head_module_names
    from lmtune.models.export import save_model
    from lmtune.train.loop import train
    from lmtune.train.regularize import start_forgetting

    dist = Dist.get()
    run_dir = Path(cfg.run.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    require_packages(cfg.tracking)  # a missing tensorboard/mlflow fails now, not after data prep
    if dist.is_main:
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        if not resume:
            for stale in ("metrics.jsonl", "rejects.jsonl"):
                (run_dir / stale).unlink(missing_ok=True)
    parts = setup(cfg, run_dir)
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

    features = encode_rows(
        task, prepared.splits["train"], run_dir / "rejects.jsonl" if dist.is_main else None
    )
    forget = None
    if forgetting_on(cfg):  # the reference measured before training; L2-SP/EWC anchors; replay rows
        model.to(dist.device)
        forget = start_forgetting(
            cfg, model, tokenizer, head_module_names(model), len(features), dist.is_main
        )
        features += forget.replay
    features = task.prepare_features(features)  # sft: packing
    eval_rows = prepared.splits.get("eval") or []
    if task.needs_reference:
        model.to(dist.device)
    # DPO without an adapter to disable: reference log-probs of the still-untrained model,
    # computed once here (and cached in the run folder for --resume); a no-op for most tasks.
    held_out = [r for name in ("eval", "test") for r in prepared.splits.get(name) or []]
    task.prepare_reference(
        model, features, held_out, run_dir, cfg.train.eval_batch_size, resume=resume
    )

    # The untrained baseline (for classification: the randomly initialised head) on the
    # held-out splits, so the summary shows what training bought.
    before = None
    if cfg.train.eval_before and not resume and dist.is_main:
        model.to(dist.device)
        with torch.no_grad():
            before = {
                name: _flat(task.evaluate(model, rows, cfg.train.eval_batch_size, None))
                for name in ("eval", "test")
                if (rows := prepared.splits.get(name))
            }
    if cfg.audit.enabled and not resume and dist.is_main:  # bias audit of the starting point
        from lmtune.evaluate.audit import audit_in_run

        model.to(dist.device)
        audit_in_run(cfg, "before", model, tokenizer, task, prepared, run_dir)

    def saver(m: torch.nn.Module, out: Path) -> None:
        save_model(m, tokenizer, out, extra=meta)

    # TensorBoard/MLflow (tracking.*, off by default) on the main process; they get every
    # metrics.jsonl event, and are closed FAILED when anything below raises.
    trackers = open_trackers(cfg, run_dir, resume=resume) if dist.is_main else Trackers()
    with trackers:
        result = train(
            cfg,
            task,
            model,
            features,
            eval_rows,
            run_dir,
            saver,
            head_names=head_module_names(model),
            resume=resume,
            stop_after=stop_after,
            quiet=quiet,
            on_eval=on_eval,
            regularizer=forget.regularizer if forget else None,
            on_log=trackers.log_event,
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
        if dist.is_main:
            done = Finished(cfg, run_dir, task, model, tokenizer, prepared, forget)
            save_model(model, tokenizer, run_dir / "model", extra=meta)
            _write_profile(done)
            summary["model_dir"] = str(run_dir / "model")
            for key, step in AFTER_TRAINING:
                value = step(done)
                if value is not None:
                    summary[key] = value
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            from lmtune.report import write_run_outputs

            # Last, once every result file exists: report.html + MODEL_CARD.md (warns, never raises).
            write_run_outputs(run_dir)
            trackers.log_summary(summary, run_dir)
    dist.barrier()
    return summary


@dataclass
class Finished:
    """What the steps after training read: the kept model and everything around it."""

    cfg: Config
    run_dir: Path
    task: Any
    model: torch.nn.Module
    tokenizer: Any
    prepared: Any
    forget: Any = None  # evaluate.forgetting.Forgetting when forgetting is on
    test: dict[str, Any] | None = None  # the whole test result, once the test step ran


def _write_profile(f: Finished) -> None:
    """What "normal input" looked like, for `lmtune monitor` after release."""
    from lmtune.ops.profile import write_profile

    try:  # a profile problem must not cost a finished training run
        write_profile(
            f.run_dir / "model",
            f.prepared.splits["train"],
            f.tokenizer,
            f.prepared.labels,
            f.cfg.monitor.vocab_size,
        )
    except Exception as exc:
        Dist.get().print(
            f"warning: data_profile.json not written ({exc}); `lmtune monitor` will skip drift checks"
        )


def _evaluate(f: Finished, rows: list[dict[str, Any]], out_dir: Path | None) -> dict[str, Any]:
    f.model.eval()
    with torch.no_grad():
        return f.task.evaluate(f.model, rows, f.cfg.train.eval_batch_size, out_dir)


def _test_split(f: Finished) -> dict[str, float] | None:
    """The kept model on the test split: eval.json, predictions and errors in the run folder."""
    rows = f.prepared.splits.get("test") or []
    if not rows:
        return None
    f.test = _evaluate(f, rows, f.run_dir)
    (f.run_dir / "eval.json").write_text(json.dumps({"split": "test", **f.test}, indent=2))
    return _flat(f.test)


def _baselines(f: Finished) -> dict[str, Any] | None:
    """Zero-/few-shot baselines of the base model on the rows the fine-tune was judged on
    (test, else eval); writes run_dir/baselines.json."""
    if not f.cfg.baselines.enabled:
        return None
    from lmtune.evaluate.baselines import run_baselines

    split = "test" if f.test is not None else "eval"
    rows = f.prepared.splits.get(split) or []
    if not rows:
        Dist.get().print("baselines skipped: no test or eval rows to compare on")
        return None
    tuned = f.test if f.test is not None else _evaluate(f, rows, None)
    return run_baselines(
        f.run_dir / "model",
        f.cfg,
        rows,
        tuned,
        f.run_dir,
        f.prepared.splits["train"],
        device=Dist.get().device,
        data=f"{split} split",
    )


def _audit(f: Finished) -> dict[str, Any] | None:
    """The bias audit after training, beside the one run before it (audit.enabled)."""
    if not f.cfg.audit.enabled:
        return None
    from lmtune.evaluate.audit import audit_in_run

    return audit_in_run(f.cfg, "after", f.model, f.tokenizer, f.task, f.prepared, f.run_dir)


def _forgetting(f: Finished) -> dict[str, Any] | None:
    """The reference measured again: forgetting.json (forgetting on)."""
    return f.forget.finish(f.model, f.run_dir) if f.forget is not None else None


def _overfitting(f: Finished) -> dict[str, Any]:
    """Overfitting flags read off metrics.jsonl (train/eval gap, eval loss rising)."""
    from lmtune.evaluate.forgetting import overfitting_flags

    log = f.run_dir / "metrics.jsonl"
    events = (
        [json.loads(line) for line in log.read_text().splitlines() if line] if log.is_file() else []
    )
    return overfitting_flags(events)


# The steps after training, in order, each (summary.json key, step). A step returns None when
# its part is off or has nothing to work on; baselines reuse the test result when there is one.
AFTER_TRAINING: tuple[tuple[str, Callable[[Finished], Any]], ...] = (
    ("test", _test_split),
    ("baselines", _baselines),
    ("audit", _audit),
    ("forgetting", _forgetting),
    ("overfitting", _overfitting),
)


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
