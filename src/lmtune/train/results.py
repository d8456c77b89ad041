"""What `lmtune train` does once the loop ends, on the main process: model/, the profile for
`lmtune monitor`, the after-training steps (test split, baselines, audit, forgetting, sample
generations, overfitting flags), summary.json, and last the report and model card."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtune.config import Config
from lmtune.runtime.dist import Dist
from lmtune.train.checkpoint import assert_finite
from lmtune.train.logging import finite_json
from lmtune.train.tracking import Trackers


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
    """The kept model on the test split: eval.json, predictions and errors in the run folder.

    Without a test split (the default: 10% eval, no test) the same files come from the eval
    split, and eval.json says so ("split": "eval"; the report names the split). Those are not
    held-out test metrics (the eval split chose the kept checkpoint), so they stay out of
    summary["test"], which the release gate reads.
    """
    rows = f.prepared.splits.get("test") or []
    split = "test"
    if not rows:
        rows, split = f.prepared.splits.get("eval") or [], "eval"
        if not rows:
            return None
    result = _evaluate(f, rows, f.run_dir)
    (f.run_dir / "eval.json").write_text(json.dumps({"split": split, **result}, indent=2))
    if split == "eval":
        Dist.get().print(
            f"no test split: eval.json, errors and per-class results come from the eval split "
            f"({len(rows)} rows, which also chose the kept checkpoint); see {f.run_dir}"
        )
        return None
    f.test = result
    return flat(f.test)


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


def _samples(f: Finished) -> None:
    """The same held-out prompts answered by the kept model, beside the before ones."""
    from lmtune.evaluate.samples import samples_in_run

    samples_in_run(f.cfg, "after", f.model, f.tokenizer, f.prepared, f.run_dir)


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
    ("samples", _samples),  # writes samples.json; adds nothing to the summary
    ("overfitting", _overfitting),
)


def flat(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a task's evaluation, as floats (summary.json's figures)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def write_results(
    done: Finished,
    summary: dict[str, Any],
    meta: dict[str, Any],
    trackers: Trackers,
    full: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """model/, the after-training steps, summary.json, report and model card (main process)."""
    from lmtune.models.export import save_model
    from lmtune.report import write_run_outputs

    run_dir = done.run_dir
    assert_finite(done.model, run_dir / "model")  # never a diverged model (the loop stops first)
    # FSDP: `full` holds the whole weights gathered onto this (main) process.
    save_model(done.model, done.tokenizer, run_dir / "model", extra=meta, state_dict=full)
    _write_profile(done)
    summary["model_dir"] = str(run_dir / "model")
    for key, step in AFTER_TRAINING:
        value = step(done)
        if value is not None:
            summary[key] = value
    summary = finite_json(summary)  # strict JSON: a NaN metric is written as null
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    # Last, once every result file exists: report.html + MODEL_CARD.md (warns, never raises).
    write_run_outputs(run_dir)
    trackers.log_summary(summary, run_dir)
    return summary
