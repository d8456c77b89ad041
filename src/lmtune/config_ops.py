"""Config sections for the life of a model after one training run: hyperparameter search
(`search:`, read by `lmtune tune`), the release gate and registry (`gate:`, read by `lmtune
pipeline`) and monitoring thresholds (`monitor:`). `lmtune train` ignores all three.
config.py adds each as a section of a run config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmtune.config_base import Strict


class GateConfig(Strict):
    """`lmtune pipeline`: release a model only when its held-out test metrics pass the gate."""

    metric: str | None = Field(
        None,
        description="Test metric the gate judges: a key of the run's eval.json (e.g. accuracy, macro_f1, eval_loss, reward_accuracy, exact, f1; an eval_ prefix is optional). None: train.early_stopping.metric.",
    )
    mode: Literal["auto", "max", "min"] = Field(
        "auto",
        description="max: higher is better; min: lower is better; auto: train.early_stopping.mode when metric is None, else min for names ending in loss, perplexity, ppl or ece and max otherwise.",
    )
    threshold: float | None = Field(
        None,
        description="Release only when the test metric is at least this (mode max) or at most this (mode min), e.g. 0.85 for accuracy. None: no threshold check (then require_beat_baseline or require_beat_current must be on, so the gate can refuse).",
    )
    require_beat_baseline: bool = Field(
        False,
        description="Also require the fine-tuned model to beat the base model's zero-shot baseline on the same test rows by min_improvement (needs baselines.enabled: true and metric accuracy or macro_f1).",
    )
    require_beat_current: bool = Field(
        False,
        description="Also require it to beat the registry's current release (its metrics.json, same metric) by min_improvement; passes with a note when nothing is released yet. Both numbers come from each run's own test split: compare like with like (same test data).",
    )
    min_improvement: float = Field(
        0.0,
        ge=0.0,
        description="How much better (absolute, in metric units) than the baseline and the current release the model must be; 0 lets a tie pass.",
    )
    registry: str = Field(
        "runs/registry",
        description="Model registry folder: one complete model folder per release (v1, v2, ...), a `current` file naming the served version, and releases.jsonl (`lmtune serve REGISTRY` serves current).",
    )


class MonitorConfig(Strict):
    """Post-release monitoring (`lmtune monitor`): what counts as an alert."""

    metric: str = Field(
        "accuracy",
        description="Metric compared with the release-time value and the previous window (a key of eval.json, e.g. accuracy, macro_f1, eval_loss).",
    )
    mode: Literal["max", "min"] = Field(
        "max", description="Whether higher (max) or lower (min) values of metric are better."
    )
    max_metric_drop: float = Field(
        0.05,
        ge=0,
        description="Alert when metric is worse than the release-time value, or than the previous window of the same model version, by more than this (absolute).",
    )
    psi_threshold: float = Field(
        0.2,
        gt=0,
        description="Alert when the population stability index of token lengths, labels or predictions (against the training data) exceeds this; 0.2 is the conventional 'significant shift'.",
    )
    ks_pvalue: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Alert when the two-sample KS test of token lengths against the training data gives a p-value below this (0 switches the check off).",
    )
    max_oov_increase: float = Field(
        0.03,
        ge=0,
        description="Alert when the out-of-vocabulary word rate (or the tokenizer's unknown-token rate) exceeds the training reference by more than this (absolute; healthy 400-row SST-2 batches moved it by under 0.01).",
    )
    max_days_since_release: float | None = Field(
        90.0,
        gt=0,
        description="Alert when the released model is older than this many days (the update frequency); None: no age check.",
    )
    vocab_size: int = Field(
        20000,
        gt=0,
        description="Most frequent training words kept in data_profile.json; words outside them count as out-of-vocabulary.",
    )


class SearchParam(Strict):
    """One dimension of a hyperparameter search: a numeric range or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(
        ...,
        description="float (a real range), int (an integer range) or categorical (a list of choices).",
    )
    low: float | None = Field(None, description="float/int: smallest value tried.")
    high: float | None = Field(None, description="float/int: largest value tried.")
    log: bool = Field(
        False, description="float/int: sample on a log scale (learning rates); needs low > 0."
    )
    step: float | None = Field(
        None,
        gt=0,
        description="float/int: spacing of the values tried (int: 1 when unset); not with log.",
    )
    choices: list[Any] | None = Field(
        None,
        description="categorical: the values tried; a value may itself be a list (e.g. LoRA target modules).",
    )
    values: list[Any] | None = Field(
        None,
        description="float/int: explicit values; required by the grid sampler (tpe/random pick among them when low/high are unset).",
    )

    @model_validator(mode="after")
    def _shape(self) -> SearchParam:
        numeric = (self.low, self.high, self.step, self.values)
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("type categorical needs choices: [a, b, ...]")
            if self.log or any(v is not None for v in numeric):
                raise ValueError(
                    "type categorical takes only choices (low, high, step, log and values are for float and int)"
                )
            return self
        if self.choices is not None:
            raise ValueError(
                f"choices are for type categorical; type {self.type} takes low and high (or values)"
            )
        if (self.low is None) != (self.high is None):
            raise ValueError(f"type {self.type} needs both low and high")
        if self.low is None and not self.values:
            raise ValueError(f"type {self.type} needs low and high (or values: [...])")
        if self.low is not None and self.high is not None:
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.log and (self.low <= 0 or self.step is not None):
                raise ValueError("log: true needs low > 0 and no step")
        if self.type == "int":
            nums = [
                v for v in (self.low, self.high, self.step, *(self.values or [])) if v is not None
            ]
            if any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) for v in nums
            ):
                raise ValueError("type int needs whole numbers for low, high, step and values")
        elif any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in self.values or []):
            raise ValueError("type float needs numbers in values")
        return self


class PrunerConfig(Strict):
    """Stops hopeless trials early from the evaluations the training loop already makes."""

    type: Literal["none", "median", "halving"] = Field(
        "median",
        description="none; median: stop a trial whose metric is worse than the median of earlier trials at the same step; halving: successive halving (keep the best 1/reduction_factor at each rung of steps).",
    )
    n_startup_trials: int = Field(
        2, ge=0, description="median: trials that run to the end before any trial is pruned."
    )
    n_warmup_steps: int = Field(
        0, ge=0, description="median: optimizer steps a trial runs before it can be pruned."
    )
    min_resource: int | Literal["auto"] = Field(
        "auto",
        description="halving: optimizer steps every trial gets before the first cut (auto: estimated from the first finished trial).",
    )
    reduction_factor: int = Field(
        3, ge=2, description="halving: 1/reduction_factor of the trials go on at each rung."
    )


class SearchConfig(Strict):
    """`lmtune tune`: hyperparameter search over config keys (`lmtune train` ignores this section)."""

    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="tpe (Bayesian, learns from finished trials), random, or grid (every combination of categorical choices and numeric values).",
    )
    seed: int | None = Field(None, description="Sampler seed (None: run.seed).")
    n_startup_trials: int = Field(
        4, ge=0, description="tpe: trials sampled at random before TPE models the results."
    )
    metric: str = Field(
        "eval_loss",
        description="Eval metric that scores a trial (a key the task's evaluation reports, e.g. eval_loss, accuracy, macro_f1; an eval_ prefix is optional); the trial's value is the metric at the checkpoint the run keeps.",
    )
    direction: Literal["maximize", "minimize"] = Field(
        "minimize", description="Whether a higher (maximize) or lower (minimize) metric is better."
    )
    n_trials: int | None = Field(
        20,
        gt=0,
        description="Trials to complete or prune in total, over every --resume; grid: at most the grid size. None: until timeout_minutes.",
    )
    timeout_minutes: float | None = Field(
        None,
        gt=0,
        description="Start no new trial after this many minutes of one invocation (the running trial finishes). None: no time limit.",
    )
    pruner: PrunerConfig = Field(
        default_factory=PrunerConfig, description="Early stopping of hopeless trials."
    )
    space: dict[str, SearchParam] = Field(
        default_factory=dict,
        description="Dotted config key -> values to try, e.g. {train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}.",
    )
    storage: str | None = Field(
        None,
        description='Optuna RDB URL of a study shared by several `lmtune tune` workers, e.g. postgresql://USER:PASSWORD@HOST:5432/DB (pip install "lmtune[postgres]"); each worker runs its own trials; a trial whose worker died is run again once. None: OUT/study.db (SQLite, one machine).',
    )
    heartbeat_seconds: int = Field(
        30,
        ge=1,
        description="search.storage: each running trial records a heartbeat this often; one silent for twice as long is failed and queued again once.",
    )

    @model_validator(mode="after")
    def _budget(self) -> SearchConfig:
        if self.n_trials is None and self.timeout_minutes is None:
            raise ValueError(
                "set search.n_trials or search.timeout_minutes (a search needs a budget)"
            )
        return self
