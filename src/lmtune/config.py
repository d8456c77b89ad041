"""Typed run configuration: one YAML file plus `key.sub=value` overrides.

Every field carries a one-line description (shown by `lmtune config show --help-fields`).
Validation reports every problem at once, each with its dotted key path and the file name,
so a user fixes a config in one pass instead of one error per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmtune.config_ops import GateConfig
from lmtune.errors import UserError

TaskName = Literal["sft", "classification", "reward", "dpo", "orpo", "rlhf", "qa"]
FormatName = Literal[
    "auto", "text", "instruction", "chat", "classification", "pair_classification",
    "preference", "pairwise", "dialogue_pair", "prompt", "qa",
]
# Tasks that learn from preference pairs, and the row formats that hold such pairs.
PREFERENCE_TASKS = ("reward", "dpo", "orpo")
PREFERENCE_FORMATS = ("preference", "pairwise", "dialogue_pair")


class Strict(BaseModel):
    """Base for all config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Strict):
    name: str = Field("run", description="Run name; used in logs and the model card.")
    output_dir: str = Field("runs/run", description="Folder that receives everything this run writes.")
    seed: int = Field(42, description="Seed for data splits, shuffling, init and dropout.")


class ModelConfig(Strict):
    name_or_path: str = Field(
        "builtin:minilm",
        description="Local directory, hub id, or builtin:NAME (builtin:minilm ships with lmtune).",
    )
    trust_remote_code: bool = Field(False, description="Run model code from the checkpoint (off: it executes foreign code).")
    max_length: int = Field(256, gt=8, description="Maximum tokens per example after templating.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    attn_implementation: str | None = Field(None, description="Attention kernel override (sdpa, eager); None lets transformers choose.")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="Set every dropout layer of the model to this probability; None keeps the checkpoint's. 0 is TRL's default for reward models and DPO (dropout makes scores noisy), and lets attention run a fused kernel that stores far fewer activations.")


class AdapterConfig(Strict):
    type: Literal["full", "lora", "dora", "head"] = Field("lora", description="full: all weights; lora/dora: peft adapters; head: frozen base, train the task head only.")
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["auto", "all-linear"] = Field("auto", description="Modules that get adapters; auto picks attention+MLP projections per architecture.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases LoRA trains.")
    modules_to_save: list[str] | Literal["auto"] = Field("auto", description="Modules trained in full beside the adapters; auto = the task head.")


class NearDedupeConfig(Strict):
    enabled: bool = Field(False, description="Remove near-duplicates (MinHash over word shingles).")
    threshold: float = Field(0.85, gt=0.0, le=1.0, description="Estimated Jaccard similarity at or above which rows are near-duplicates.")
    shingle: int = Field(5, gt=0, description="Words per shingle.")
    num_perm: int = Field(64, gt=0, description="MinHash permutations (more: slower, more exact).")


class CleanConfig(Strict):
    normalize: bool = Field(True, description="Unicode NFC and whitespace normalisation.")
    control_chars: bool = Field(True, description="Remove control characters (keeps newlines and tabs).")
    dedupe: bool = Field(True, description="Drop exact duplicate rows (after normalisation).")
    near_dedupe: NearDedupeConfig = Field(default_factory=NearDedupeConfig, description="Near-duplicate removal.")
    min_chars: int = Field(1, ge=0, description="Drop rows whose main text is shorter than this.")
    max_chars: int | None = Field(None, description="Drop rows whose main text is longer than this (None: no limit).")
    pii: bool = Field(True, description="Redact emails, phone numbers, IPs, credit cards (Luhn) and URLs.")
    secrets: bool = Field(True, description="Redact API keys, access tokens and private-key blocks.")


class SplitConfig(Strict):
    eval: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of rows for the eval split when no eval file is given.")
    test: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of rows for the test split when no test file is given.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits (classification).")
    group_by: str | None = Field(None, description="Column whose rows stay together in one split (e.g. title: no article in two splits); eval/test take whole groups in a seeded order until they hold their share of rows; not stratified.")

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.eval + self.test >= 1.0:
            raise ValueError("split.eval + split.test must be below 1.0 so train keeps rows")
        return self


class LeakageConfig(Strict):
    check: bool = Field(True, description="Report exact and near-duplicate overlap between train and eval/test.")
    remove_from_train: bool = Field(False, description="Drop train rows that leak into eval/test.")
    threshold: float = Field(0.85, gt=0.0, le=1.0, description="Near-duplicate similarity threshold for leakage.")


class BalanceConfig(Strict):
    column: str | None = Field(None, description="Column to balance (label or a group column such as a demographic attribute).")
    strategy: Literal["none", "undersample", "oversample", "loss_weights"] = Field("none", description="How to balance the train split.")


class DataConfig(Strict):
    train: str | list[str] | None = Field(None, description="Training file(s) or a datasets save_to_disk folder.")
    eval: str | list[str] | None = Field(None, description="Eval file(s); if absent, split from train.")
    test: str | list[str] | None = Field(None, description="Test file(s); if absent, split from train when split.test > 0.")
    format: FormatName = Field("auto", description="Row format; auto detects from the columns.")
    columns: dict[str, str] = Field(default_factory=dict, description="Map lmtune field -> your column, e.g. {text: review, label: stars}.")
    labels: list[str] | None = Field(None, description="Allowed labels in order; rows with other labels are rejected. None: collected from train.")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, v: Any) -> Any:
        # YAML reads `labels: [0, 1]` as ints; labels are compared as strings everywhere.
        return [str(x) for x in v] if isinstance(v, list) else v
    max_bad_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Fail the run when more than this fraction of rows is rejected.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning steps.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Splitting when eval/test files are absent.")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig, description="Train/eval/test overlap check.")
    balance: BalanceConfig = Field(default_factory=BalanceConfig, description="Balancing by a label or group column.")
    template: Literal["auto", "alpaca", "chatml"] = Field("auto", description="Prompt template for instruction/chat rows; auto uses the tokenizer's chat template when present.")
    packing: bool = Field(False, description="Pack several SFT examples per sequence (block-diagonal attention, no cross-talk).")
    bucketing: bool = Field(True, description="Group examples of similar length into batches to cut padding.")
    limit: int | None = Field(None, gt=0, description="Use at most this many rows per input file (quick experiments).")


class EarlyStopConfig(Strict):
    metric: str = Field("eval_loss", description="Eval metric that decides the best checkpoint and early stopping.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better for the metric.")
    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement (None: never stop early).")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as an improvement.")


class TrainConfig(Strict):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Optimizer steps to run; -1 derives it from epochs.")
    batch_size: int = Field(16, gt=0, description="Examples per micro-batch per process.")
    eval_batch_size: int = Field(64, gt=0, description="Examples per eval batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    head_lr: float | None = Field(None, gt=0, description="Learning rate for a freshly initialised task head (None: same as lr).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (never applied to biases and norms).")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="LR schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of total steps.")
    warmup_steps: int = Field(0, ge=0, description="Warmup steps (overrides warmup_ratio when > 0).")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm (None: no clipping).")
    precision: Literal["fp32", "bf16", "auto"] = Field("auto", description="fp32, or bf16 autocast; auto picks bf16 where the hardware supports it.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N optimizer steps (0: only per epoch).")
    eval_each_epoch: bool = Field(True, description="Evaluate at the end of each epoch.")
    log_every: int = Field(10, gt=0, description="Log train loss every N optimizer steps.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N optimizer steps (0: at each evaluation).")
    keep_last: int = Field(2, ge=1, description="Checkpoints to keep (the best one is always kept).")
    early_stopping: EarlyStopConfig = Field(default_factory=EarlyStopConfig, description="Best-model selection and early stopping.")
    class_weights: Literal["none", "balanced"] = Field("none", description="Class-weighted loss for imbalanced labels (classification).")
    eval_before: bool = Field(True, description="Evaluate once before training (the untrained baseline in the summary).")
    compile: bool = Field(False, description="torch.compile the model (helps long runs; costs start-up time).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")


class PreferenceConfig(Strict):
    """Preference learning (tasks reward, dpo, orpo): losses, reference model, truncation."""

    loss: Literal["sigmoid", "robust", "ipo", "hinge", "simpo"] = Field("sigmoid", description="DPO-family loss (task dpo): sigmoid (DPO), robust (rDPO), ipo, hinge, or simpo (length-normalised, no reference model).")
    beta: float = Field(0.1, gt=0, description="DPO/IPO/hinge/SimPO temperature beta (IPO: its tau); higher keeps the policy closer to the reference.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Probability that a preference label is flipped: conservative DPO for sigmoid/simpo, rDPO for robust.")
    simpo_gamma: float = Field(0.5, description="SimPO target reward margin gamma (absolute, in reward units; TRL's CPO simpo_gamma).")
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO weight lambda of the odds-ratio term beside the chosen-response NLL (TRL's ORPO beta).")
    reference: Literal["auto", "precompute"] = Field("auto", description="DPO reference log-probs. auto: LoRA/DoRA use the base with the adapter disabled at each step, full/head fine-tuning precompute them once (cached in the run folder); precompute: always precompute.")
    ties: Literal["drop", "keep"] = Field("drop", description="Pairwise rows whose preference is a tie: drop (counted in rejects.jsonl) or keep (task reward only: a tie trains both rewards toward equal, target P(a > b) = 0.5, and is left out of pairwise_accuracy).")
    max_prompt_length: int | None = Field(None, gt=0, description="Prompts longer than this keep their last tokens (the end, next to the response); None: prompts are not cut, and a prompt that leaves no room for a response rejects the row.")


class RLHFConfig(Strict):
    """Online RL from a reward (task rlhf): sample, score, group-relative advantages, KL, clip."""

    reward: str | None = Field(None, description="Where rewards come from: a reward-model run or model folder (a `task: reward` run), or a Python function as module:function (called as f(prompt, completion) -> float; imported from the current directory or PYTHONPATH).")
    samples_per_prompt: int = Field(4, ge=2, description="Completions sampled per prompt each step (k); advantages compare the k completions of one prompt, so at least 2.")
    max_new_tokens: int = Field(32, gt=0, description="Most tokens sampled per completion (sampling stops earlier at the end-of-sequence token).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for training rollouts; log-probs in the loss use the same temperature.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling: sample from the smallest token set with this much probability (1.0: off).")
    advantage: Literal["rloo", "grpo"] = Field("rloo", description="Group-relative advantage: rloo (reward minus the mean of the other k-1 completions), grpo (reward minus the group mean, divided by the group standard deviation).")
    kl_coef: float = Field(0.05, ge=0, description="Weight beta of the KL penalty against the reference (the initial model); 0 switches the reference off.")
    kl_in: Literal["loss", "reward"] = Field("loss", description="Where the KL penalty goes: loss (GRPO: beta * per-token k3 estimate added to the loss) or reward (PPO/RLOO: beta * the summed per-token log-ratio subtracted from each completion's reward before advantages).")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clipping epsilon: the policy ratio to the sampling-time policy is clipped to [1-eps, 1+eps]; only binds when updates_per_rollout > 1.")
    updates_per_rollout: int = Field(1, ge=1, description="Optimizer steps on each set of sampled completions (PPO epochs, TRL's num_iterations); >1 reuses a rollout for the next steps, whose own prompts are then skipped.")
    aggregation: Literal["sequence", "token_budget"] = Field("sequence", description="Per-completion loss: sequence (mean over its tokens, GRPO) or token_budget (sum over its tokens / max_new_tokens, Dr. GRPO: no preference for short or long completions).")
    eval_temperature: float = Field(0.0, ge=0, description="Sampling temperature for evaluation completions (0: greedy).")
    eval_seed: int = Field(0, description="Seed for sampled evaluation completions (eval never disturbs the training random stream).")
    reward_batch_size: int = Field(32, gt=0, description="Completions per forward pass of a reward model.")


class BaselinesConfig(Strict):
    """Zero-/few-shot baselines of the base model beside the fine-tuned one (task classification)."""

    enabled: bool = Field(False, description="At the end of `lmtune train`, score zero-shot and few-shot baselines of the base model on the test split (the eval split when there is no test split); written to baselines.json and summary.json.")
    shots: int = Field(16, ge=1, description="Few-shot examples per class (k), sampled from the training split.")
    seeds: int = Field(3, ge=1, description="Few-shot repeats with differently sampled examples; mean and std are reported (k-shot results are noisy).")
    label_descriptions: dict[str, str | list[str]] = Field(default_factory=dict, description="Encoders: label -> description text (or a list, averaged) embedded for zero-shot, e.g. {pos: a positive, happy review}; empty: description_template for every label.")
    description_template: str = Field("This text is {label}.", description="Encoders: the description used for every label when label_descriptions is empty ({label} is replaced).")
    prompt: str = Field("Text: {text}\nLabel:", description="Causal LMs: prompt for one example ({text}, optionally {text_pair}); the label word follows after a space, demonstrations are separated by a blank line.")
    label_words: dict[str, str] = Field(default_factory=dict, description="Causal LMs: label -> continuation whose log-likelihood is scored, e.g. {'0': negative, '1': positive}; empty: the label itself.")
    scoring: Literal["mean", "sum"] = Field("mean", description="Causal LMs: rank labels by the mean (per token, length-normalised) or the sum of their continuation's token log-probabilities.")
    batch_size: int = Field(32, gt=0, description="Sequences per forward pass of the base model.")

    @field_validator("label_descriptions", "label_words", mode="before")
    @classmethod
    def _keys_as_strings(cls, v: Any) -> Any:
        # YAML reads `{0: negative}` with int keys; labels are compared as strings everywhere.
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _placeholders(self) -> BaselinesConfig:
        if "{text}" not in self.prompt:
            raise ValueError("baselines.prompt must contain {text} (example: 'Review: {text}\\nSentiment:')")
        if "{label}" not in self.description_template:
            raise ValueError("baselines.description_template must contain {label}")
        return self


class QAConfig(Strict):
    """Extractive question answering (task qa): windows over long contexts, answer decoding."""

    doc_stride: int = Field(128, gt=0, description="Tokens shared by consecutive windows when a context is longer than model.max_length.")
    max_answer_length: int = Field(30, gt=0, description="Longest answer span, in tokens, that decoding may pick.")
    n_best: int = Field(20, gt=0, description="Start and end candidates per window that decoding combines into spans.")
    null_threshold: float = Field(0.0, description="Answer 'no answer' when the null score beats the best span score by more than this (SQuAD v2); eval.json reports the best value as best_f1_thresh.")
    allow_no_answer: bool | None = Field(None, description="Predict 'no answer' at all (SQuAD v2 behaviour); None: yes when the training data has unanswerable questions.")


class MonitorConfig(Strict):
    """Post-release monitoring (`lmtune monitor`): what counts as an alert."""

    metric: str = Field("accuracy", description="Metric compared with the release-time value and the previous window (a key of eval.json, e.g. accuracy, macro_f1, eval_loss).")
    mode: Literal["max", "min"] = Field("max", description="Whether higher (max) or lower (min) values of metric are better.")
    max_metric_drop: float = Field(0.05, ge=0, description="Alert when metric is worse than the release-time value, or than the previous window of the same model version, by more than this (absolute).")
    psi_threshold: float = Field(0.2, gt=0, description="Alert when the population stability index of token lengths, labels or predictions (against the training data) exceeds this; 0.2 is the conventional 'significant shift'.")
    ks_pvalue: float = Field(0.01, ge=0, le=1, description="Alert when the two-sample KS test of token lengths against the training data gives a p-value below this (0 switches the check off).")
    max_oov_increase: float = Field(0.03, ge=0, description="Alert when the out-of-vocabulary word rate (or the tokenizer's unknown-token rate) exceeds the training reference by more than this (absolute; healthy 400-row SST-2 batches moved it by under 0.01).")
    max_days_since_release: float | None = Field(90.0, gt=0, description="Alert when the released model is older than this many days (the update frequency); None: no age check.")
    vocab_size: int = Field(20000, gt=0, description="Most frequent training words kept in data_profile.json; words outside them count as out-of-vocabulary.")


class SearchParam(Strict):
    """One dimension of a hyperparameter search: a numeric range or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(..., description="float (a real range), int (an integer range) or categorical (a list of choices).")
    low: float | None = Field(None, description="float/int: smallest value tried.")
    high: float | None = Field(None, description="float/int: largest value tried.")
    log: bool = Field(False, description="float/int: sample on a log scale (learning rates); needs low > 0.")
    step: float | None = Field(None, gt=0, description="float/int: spacing of the values tried (int: 1 when unset); not with log.")
    choices: list[Any] | None = Field(None, description="categorical: the values tried; a value may itself be a list (e.g. LoRA target modules).")
    values: list[Any] | None = Field(None, description="float/int: explicit values; required by the grid sampler (tpe/random pick among them when low/high are unset).")

    @model_validator(mode="after")
    def _shape(self) -> SearchParam:
        numeric = (self.low, self.high, self.step, self.values)
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("type categorical needs choices: [a, b, ...]")
            if self.log or any(v is not None for v in numeric):
                raise ValueError("type categorical takes only choices (low, high, step, log and values are for float and int)")
            return self
        if self.choices is not None:
            raise ValueError(f"choices are for type categorical; type {self.type} takes low and high (or values)")
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
            nums = [v for v in (self.low, self.high, self.step, *(self.values or [])) if v is not None]
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) for v in nums):
                raise ValueError("type int needs whole numbers for low, high, step and values")
        elif any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in self.values or []):
            raise ValueError("type float needs numbers in values")
        return self


class PrunerConfig(Strict):
    """Stops hopeless trials early from the evaluations the training loop already makes."""

    type: Literal["none", "median", "halving"] = Field("median", description="none; median: stop a trial whose metric is worse than the median of earlier trials at the same step; halving: successive halving (keep the best 1/reduction_factor at each rung of steps).")
    n_startup_trials: int = Field(2, ge=0, description="median: trials that run to the end before any trial is pruned.")
    n_warmup_steps: int = Field(0, ge=0, description="median: optimizer steps a trial runs before it can be pruned.")
    min_resource: int | Literal["auto"] = Field("auto", description="halving: optimizer steps every trial gets before the first cut (auto: estimated from the first finished trial).")
    reduction_factor: int = Field(3, ge=2, description="halving: 1/reduction_factor of the trials go on at each rung.")


class SearchConfig(Strict):
    """`lmtune tune`: hyperparameter search over config keys (`lmtune train` ignores this section)."""

    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe (Bayesian, learns from finished trials), random, or grid (every combination of categorical choices and numeric values).")
    seed: int | None = Field(None, description="Sampler seed (None: run.seed).")
    n_startup_trials: int = Field(4, ge=0, description="tpe: trials sampled at random before TPE models the results.")
    metric: str = Field("eval_loss", description="Eval metric that scores a trial (a key the task's evaluation reports, e.g. eval_loss, accuracy, macro_f1; an eval_ prefix is optional); the trial's value is the metric at the checkpoint the run keeps.")
    direction: Literal["maximize", "minimize"] = Field("minimize", description="Whether a higher (maximize) or lower (minimize) metric is better.")
    n_trials: int | None = Field(20, gt=0, description="Trials to complete or prune in total, over every --resume; grid: at most the grid size. None: until timeout_minutes.")
    timeout_minutes: float | None = Field(None, gt=0, description="Start no new trial after this many minutes of one invocation (the running trial finishes). None: no time limit.")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig, description="Early stopping of hopeless trials.")
    space: dict[str, SearchParam] = Field(default_factory=dict, description="Dotted config key -> values to try, e.g. {train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}.")

    @model_validator(mode="after")
    def _budget(self) -> SearchConfig:
        if self.n_trials is None and self.timeout_minutes is None:
            raise ValueError("set search.n_trials or search.timeout_minutes (a search needs a budget)")
        return self


class EWCConfig(Strict):
    """Elastic weight consolidation: a Fisher-weighted pull toward the weights before training."""

    weight: float = Field(0.0, ge=0, description="EWC weight lambda: adds lambda * sum F_i (w_i - w0_i)^2 over the trainable weights except a classifier head; F is the diagonal Fisher on the reference, scaled to mean 1 so lambda is on the l2sp scale. 0: off.")
    samples: int = Field(256, gt=0, description="Reference examples (prior-task rows, text chunks for causal LMs, masked tokens for MLM encoders) whose squared loss gradients make the diagonal Fisher; computed once before training.")


class ReplayConfig(Strict):
    """Rehearsal: mix rows of general or previous text into the training data (task sft)."""

    data: str | None = Field(None, description="Text to replay: .txt/.raw (one row per non-empty line) or jsonl/json/csv/tsv/parquet with a text column; each row trains as a plain-text SFT row (loss on every token).")
    fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of the training examples that are replay rows: n_train * fraction / (1 - fraction) rows, sampled with run.seed. 0: off.")


class MitigationConfig(Strict):
    """Ways to forget less, each switchable; forgetting.json records which were on."""

    l2sp: float = Field(0.0, ge=0, description="L2-SP weight alpha: adds alpha * sum (w - w0)^2 over the trainable weights except a classifier head, pulling them toward their values before training. 0: off.")
    ewc: EWCConfig = Field(default_factory=EWCConfig, description="Elastic weight consolidation (needs forgetting.reference or forgetting.prior).")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="Replay of general or previous text (task sft only).")


class ForgettingConfig(Strict):
    """Catastrophic forgetting: a reference set measured before and after training, and mitigation."""

    reference: str | None = Field(None, description="Reference data measured before and after training: general text for causal LMs (perplexity) and MLM encoders (pseudo-perplexity), or labelled rows of the prior task (prior_accuracy; default: the prior run's data/eval.jsonl).")
    prior: str | None = Field(None, description="The previous classification task: its run folder or model folder, whose head and labels score this model's encoder (task classification or reward); auto: model.name_or_path when it is an lmtune classifier, else nothing to measure.")
    measure: Literal["auto", "perplexity", "pseudo_perplexity", "prior_accuracy"] = Field("auto", description="auto: perplexity for causal LMs, prior_accuracy when a prior task is set or found, else pseudo_perplexity (encoders whose checkpoint has an MLM head).")
    max_tokens: int = Field(16384, gt=0, description="Text references: tokens scored (chunks of model.max_length for perplexity, masked positions for pseudo-perplexity); fewer is faster and noisier.")
    limit: int | None = Field(2000, gt=0, description="Most reference rows read (None: all).")
    batch_size: int = Field(16, gt=0, description="Sequences per forward pass when measuring.")
    mitigation: MitigationConfig = Field(default_factory=MitigationConfig, description="L2-SP, EWC and replay; LoRA (adapter.type lora) is the structural option.")

    def problems(self, task: str, adapter: str) -> list[str]:
        """Combinations that cannot work, as messages naming the keys (checked with the task)."""
        causal = task in ("sft", "dpo", "orpo", "rlhf")
        m, out = self.mitigation, []
        if (self.prior or self.measure == "prior_accuracy") and task not in ("classification", "reward"):
            out.append(f"forgetting.prior is a classification task measured on a classifier's encoder; "
                       f"task {task} cannot use it (use forgetting.reference)")
        if self.measure == "perplexity" and not causal:
            out.append(f"forgetting.measure perplexity needs a causal LM; task {task} trains an encoder")
        if self.measure in ("pseudo_perplexity", "prior_accuracy") and causal:
            out.append(f"forgetting.measure {self.measure} is for encoders; task {task} trains a causal "
                       "LM (use perplexity or auto)")
        if m.ewc.weight > 0 and not (self.reference or self.prior):
            out.append("forgetting.mitigation.ewc needs forgetting.reference or forgetting.prior "
                       "(the Fisher is computed on it)")
        if (m.l2sp > 0 or m.ewc.weight > 0) and adapter == "head":
            out.append("forgetting.mitigation l2sp/ewc exclude the task head, which is all that "
                       "adapter.type head trains: use adapter.type full or lora")
        if (m.replay.fraction > 0) != bool(m.replay.data):
            out.append("forgetting.mitigation.replay needs both data (a text file) and fraction > 0")
        if m.replay.fraction > 0 and task != "sft":
            # A classifier has one head: rows of a previous task (other labels, or the same label
            # names meaning something else) would train this head on that task's labels.
            out.append(f"forgetting.mitigation.replay applies to task sft only (task {task}): a "
                       "classifier has one head, so replaying a previous task's rows would train it "
                       "on that task's labels; use l2sp or ewc, or add same-task rows to data.train")
        return out


class AuditConfig(Strict):
    """Bias audit run by `lmtune train` before and after training (audit.json in the run folder)."""

    enabled: bool = Field(False, description="Run the bias audit before and after training: CrowS-Pairs for causal LMs, counterfactual term swaps for classifiers (after training only: an untrained head predicts noise).")
    crows: str | None = Field(None, description="CrowS-Pairs CSV (crows_pairs_anonymized.csv from nyu-mll/crows-pairs) or its folder; None: no CrowS-Pairs.")
    max_pairs: int | None = Field(None, gt=0, description="Score a seeded random sample of this many CrowS-Pairs pairs (None: all).")
    data: str | None = Field(None, description="Texts for counterfactual probes (jsonl/csv/txt, read with data.columns); None: the eval split, else the test split.")
    worst: int = Field(10, ge=0, description="Largest prediction changes listed in audit.json.")


class Config(Strict):
    """A whole run. Every section has defaults, so a config only states what differs."""

    run: RunConfig = Field(default_factory=RunConfig, description="Run identity and output folder.")
    task: TaskName = Field("classification", description="What to train: sft (causal LM), classification, reward (Bradley-Terry reward model), dpo or orpo (preference tuning of a causal LM), rlhf (online RL of a causal LM from a reward).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="Which weights train.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data loading, cleaning and splitting.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation and the training loop.")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="Preference learning (tasks reward, dpo, orpo).")
    rlhf: RLHFConfig = Field(default_factory=RLHFConfig, description="Online RL from a reward model or reward function (task rlhf).")
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig, description="Forgetting: a reference set measured before and after training (forgetting.json), and mitigation (L2-SP, EWC, replay).")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Post-release monitoring thresholds (`lmtune monitor`).")
    qa: QAConfig = Field(default_factory=QAConfig, description="Extractive question answering (task qa).")
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig, description="Zero-/few-shot baselines of the base model beside the fine-tuned one (task classification).")
    search: SearchConfig = Field(default_factory=SearchConfig, description="Hyperparameter search run by `lmtune tune` (ignored by `lmtune train`).")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Bias audit before and after training (CrowS-Pairs, counterfactual term swaps); also `lmtune audit`.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Release gate and model registry for `lmtune pipeline` (ignored by `lmtune train`).")

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        problems = []
        if self.task == "sft" and self.data.format in ("classification", "pair_classification"):
            problems.append("task sft cannot train on data.format " + self.data.format)
        if self.task == "classification" and self.data.format in ("text", "instruction", "chat"):
            problems.append("task classification needs labelled rows, not data.format " + self.data.format)
        problems += self._preference_problems()
        problems += self._rlhf_problems()
        problems += self.forgetting.problems(self.task, self.adapter.type)
        problems += self._qa_problems()
        if self.baselines.enabled and self.task != "classification":
            problems.append("baselines.enabled only applies to task classification")
        if self.data.packing and self.task != "sft":
            problems.append("data.packing only applies to task sft")
        if self.train.class_weights != "none" and self.task != "classification":
            problems.append("train.class_weights only applies to task classification")
        if self.data.balance.strategy == "loss_weights" and self.task != "classification":
            problems.append("data.balance.strategy loss_weights only applies to task classification")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _preference_problems(self) -> list[str]:
        pref, fmt = self.preference, self.data.format
        problems = []
        if self.task in PREFERENCE_TASKS and fmt not in ("auto", *PREFERENCE_FORMATS):
            problems.append(f"task {self.task} needs preference pairs (data.format "
                            f"{', '.join(PREFERENCE_FORMATS)} or auto), not data.format {fmt}")
        if self.task not in PREFERENCE_TASKS and fmt in PREFERENCE_FORMATS:
            problems.append(f"data.format {fmt} holds preference pairs: use task "
                            f"{', '.join(PREFERENCE_TASKS)}")
        # Compare with the defaults (not fields_set) so a dumped config still loads.
        if self.task not in PREFERENCE_TASKS and pref != PreferenceConfig():
            problems.append(f"the preference section only applies to tasks {', '.join(PREFERENCE_TASKS)}")
        if pref.ties == "keep" and self.task != "reward":
            problems.append(f"preference.ties: keep is for task reward (a tie is a target of 0.5 "
                            f"there); task {self.task} has no use for ties: use preference.ties: drop")
        if self.task in ("reward", "orpo") and pref.loss != "sigmoid":
            problems.append(f"preference.loss picks a DPO-family loss; task {self.task} has its own")
        if pref.label_smoothing > 0 and pref.loss in ("ipo", "hinge"):
            problems.append(f"preference.label_smoothing does not apply to preference.loss {pref.loss} "
                            "(use sigmoid, robust or simpo)")
        return problems


    def _rlhf_problems(self) -> list[str]:
        rl, fmt = self.rlhf, self.data.format
        if self.task != "rlhf":
            problems = ["data.format prompt holds prompts only: use task rlhf"] if fmt == "prompt" else []
            if rl != RLHFConfig():
                problems.append("the rlhf section only applies to task rlhf")
            return problems
        problems = []
        if fmt not in ("auto", "prompt"):
            problems.append(f"task rlhf reads prompts (data.format prompt or auto), not data.format {fmt}")
        if not rl.reward:
            problems.append("task rlhf needs rlhf.reward: a reward-model run folder or a Python "
                            "function as module:function (e.g. examples.rewards:vowel_share)")
        if rl.max_new_tokens >= self.model.max_length:
            problems.append(f"rlhf.max_new_tokens ({rl.max_new_tokens}) must be below "
                            f"model.max_length ({self.model.max_length}) to leave room for the prompt")
        return problems

    def _qa_problems(self) -> list[str]:
        fmt, problems = self.data.format, []
        if self.task != "qa":
            if fmt == "qa":
                problems.append("data.format qa holds questions with contexts: use task qa")
            if self.qa != QAConfig():
                problems.append("the qa section only applies to task qa")
            return problems
        if fmt not in ("auto", "qa"):
            problems.append(f"task qa reads SQuAD JSON or context/question/answers rows "
                            f"(data.format qa or auto), not data.format {fmt}")
        if self.qa.doc_stride + 32 > self.model.max_length:
            # Each window holds the question, 3 special tokens, doc_stride old and some new context.
            problems.append(f"qa.doc_stride ({self.qa.doc_stride}) must be at least 32 below "
                            f"model.max_length ({self.model.max_length}) to leave room for the "
                            "question and new context in each window")
        return problems


def _parse_value(raw: str) -> Any:
    """Parse an override value with YAML rules so `lr=1e-4`, `x=true`, `l=[a,b]` get real types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in order onto a nested dict (returns the same dict)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (example: train.lr=1e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_value(raw)
    return data


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {len(err.errors())} problem(s) in the config:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `lmtune config show --fields` lists the keys)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        lines.append(f"  - {path}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides, validate; raise UserError listing every problem."""
    data: dict[str, Any] = {}
    source = "<overrides>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist (check the path; shipped examples are in configs/)")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: the top level must be a mapping of sections (run, model, data, train, ...)")
        data = loaded
    apply_overrides(data, list(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_errors(err, source)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what `config show` prints and the run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, description) for every field, for `config show --fields`."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        else:
            default = field.default_factory() if field.default_factory else field.default
            rows.append((key, repr(default), field.description or ""))
    return rows
