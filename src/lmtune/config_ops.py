"""Config sections for operations after training: the release gate and the model registry.

Kept apart from config.py (which holds the training sections) so that file stays readable;
config.py imports GateConfig and adds it as the `gate:` section of a run config.
`lmtune train` ignores this section; `lmtune pipeline` reads it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    # Same policy as config.Strict (unknown keys are errors); a copy, because importing
    # config.py from here would be circular (config.py imports this module).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GateConfig(_Strict):
    """`lmtune pipeline`: release a model only when its held-out test metrics pass the gate."""

    metric: str | None = Field(None, description="Test metric the gate judges: a key of the run's eval.json (e.g. accuracy, macro_f1, eval_loss, reward_accuracy, exact, f1; an eval_ prefix is optional). None: train.early_stopping.metric.")
    mode: Literal["auto", "max", "min"] = Field("auto", description="max: higher is better; min: lower is better; auto: train.early_stopping.mode when metric is None, else min for names ending in loss, perplexity, ppl or ece and max otherwise.")
    threshold: float | None = Field(None, description="Release only when the test metric is at least this (mode max) or at most this (mode min), e.g. 0.85 for accuracy. None: no threshold check (then require_beat_baseline or require_beat_current must be on, so the gate can refuse).")
    require_beat_baseline: bool = Field(False, description="Also require the fine-tuned model to beat the base model's zero-shot baseline on the same test rows by min_improvement (needs baselines.enabled: true and metric accuracy or macro_f1).")
    require_beat_current: bool = Field(False, description="Also require it to beat the registry's current release (its metrics.json, same metric) by min_improvement; passes with a note when nothing is released yet. Both numbers come from each run's own test split: compare like with like (same test data).")
    min_improvement: float = Field(0.0, ge=0.0, description="How much better (absolute, in metric units) than the baseline and the current release the model must be; 0 lets a tie pass.")
    registry: str = Field("runs/registry", description="Model registry folder: one complete model folder per release (v1, v2, ...), a `current` file naming the served version, and releases.jsonl (`lmtune serve REGISTRY` serves current).")

