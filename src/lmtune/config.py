"""Typed run configuration: one YAML file plus `key.sub=value` overrides.

Every field carries a one-line description (shown by `lmtune config show --fields`).
Validation reports every problem at once, each with its dotted key path and the file name,
so a user fixes a config in one pass instead of one error per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from lmtune.config_base import Strict
from lmtune.config_eval import (  # noqa: F401 - sections are importable from lmtune.config too
    AuditConfig,
    BaselinesConfig,
    EWCConfig,
    ForgettingConfig,
    MitigationConfig,
    QAConfig,
    ReplayConfig,
)
from lmtune.config_ops import GateConfig, MonitorConfig, PrunerConfig, SearchConfig, SearchParam  # noqa: F401
from lmtune.errors import UserError
from lmtune.runtime.config import DistributedConfig
from lmtune.tasks import TASKS, row_formats, section_models, section_owners, spec
from lmtune.tasks.spec import load_object

# Row formats data/formats.py reads; tasks may declare more (their specs' row_formats).
BUILTIN_FORMATS = (
    "text",
    "instruction",
    "chat",
    "classification",
    "pair_classification",
    "preference",
    "pairwise",
    "dialogue_pair",
    "prompt",
    "qa",
)
PREFERENCE_FORMATS = ("preference", "pairwise", "dialogue_pair")
# What a task whose first format is the key reads, for "task X <needs>, not data.format Y".
_NEEDS = {
    "preference": "needs preference pairs (data.format preference, pairwise, dialogue_pair or auto)",
    "prompt": "reads prompts (data.format prompt or auto)",
    "qa": "reads SQuAD JSON or context/question/answers rows (data.format qa or auto)",
    "classification": "needs labelled rows (data.format classification, pair_classification "
    "or auto)",
}


def format_names() -> tuple[str, ...]:
    """Every data.format value: auto, the built-in formats, and those tasks declare."""
    return ("auto", *BUILTIN_FORMATS, *row_formats())


def _tasks_where(flag: str) -> str:
    return ", ".join(n for n, s in TASKS.items() if getattr(s, flag))


class RunConfig(Strict):
    name: str = Field("run", description="Run name; used in logs and the model card.")
    output_dir: str = Field(
        "runs/run", description="Folder that receives everything this run writes."
    )
    seed: int = Field(42, description="Seed for data splits, shuffling, init and dropout.")


class QuantizationConfig(Strict):
    """A base loaded in 4 or 8 bits through bitsandbytes (QLoRA); only adapters train on it."""

    bits: Literal[4, 8] = Field(
        4, description="4: NF4/FP4 weights (QLoRA); 8: LLM.int8 weights (bitsandbytes)."
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (normal float, QLoRA's choice) or fp4."
    )
    double_quant: bool = Field(
        True,
        description="Quantize the 4-bit block scales too (about 0.4 bits per weight less).",
    )
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16",
        description="dtype the 4-bit weights are de-quantized to for each matmul (fp32 on CPUs without bf16).",
    )


class ModelConfig(Strict):
    name_or_path: str = Field(
        "builtin:minilm",
        description="Local directory, hub id, or builtin:NAME (builtin:minilm ships with lmtune).",
    )
    trust_remote_code: bool = Field(
        False, description="Run model code from the checkpoint (off: it executes foreign code)."
    )
    max_length: int = Field(256, gt=8, description="Maximum tokens per example after templating.")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) for hub ids."
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel override (sdpa, eager, flash_attention_2); auto: flash_attention_2 when the flash_attn package is installed, else sdpa; None lets transformers choose.",
    )
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="How a classifier or reward model reads the encoder (tasks classification, reward): cls is transformers' head (first token through the pooler); mean is the masked mean of the last layer, how sentence encoders such as builtin:minilm were trained (BERT encoders only; saved folders load in lmtune, plain transformers refuses them).",
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Set every dropout layer of the model to this probability; None keeps the checkpoint's. 0 is TRL's default for reward models and DPO (dropout makes scores noisy), and lets attention run a fused kernel that stores far fewer activations.",
    )
    quantization: QuantizationConfig | None = Field(
        None,
        description='Load the base in 4 or 8 bits through bitsandbytes (QLoRA; adapter lora or dora, causal-LM tasks); None: full precision. Needs `pip install "lmtune[qlora]"`.',
    )


class AdapterConfig(Strict):
    type: Literal["full", "lora", "dora", "head"] = Field(
        "lora",
        description="full: all weights; lora/dora: peft adapters; head: frozen base, train the task head only.",
    )
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["auto", "all-linear"] = Field(
        "auto",
        description="Modules that get adapters; auto picks attention+MLP projections per architecture.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases LoRA trains."
    )
    modules_to_save: list[str] | Literal["auto"] = Field(
        "auto", description="Modules trained in full beside the adapters; auto = the task head."
    )


class NearDedupeConfig(Strict):
    enabled: bool = Field(False, description="Remove near-duplicates (MinHash over word shingles).")
    threshold: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard similarity at or above which rows are near-duplicates.",
    )
    shingle: int = Field(5, gt=0, description="Words per shingle.")
    num_perm: int = Field(64, gt=0, description="MinHash permutations (more: slower, more exact).")


PiiMode = Literal["detect", "redact", "off"]


class CleanConfig(Strict):
    normalize: bool = Field(True, description="Unicode NFC and whitespace normalisation.")
    control_chars: bool = Field(
        True, description="Remove control characters (keeps newlines and tabs)."
    )
    dedupe: bool = Field(True, description="Drop exact duplicate rows (after normalisation).")
    near_dedupe: NearDedupeConfig = Field(
        default_factory=NearDedupeConfig, description="Near-duplicate removal."
    )
    min_chars: int = Field(1, ge=0, description="Drop rows whose main text is shorter than this.")
    max_chars: int | None = Field(
        None, description="Drop rows whose main text is longer than this (None: no limit)."
    )
    pii: PiiMode = Field(
        "detect",
        description="Emails, phone numbers, IPs, credit cards (Luhn) and URLs: detect (count and report them, text unchanged), redact (replace with placeholders) or off. true means redact, false off.",
    )
    secrets: PiiMode = Field(
        "detect",
        description="API keys, access tokens and private-key blocks: detect, redact or off (as pii).",
    )

    @field_validator("pii", "secrets", mode="before")
    @classmethod
    def _bool_mode(cls, v: Any) -> Any:
        # Older configs said `pii: true` (which redacted) or false.
        return {True: "redact", False: "off"}.get(v, v) if isinstance(v, bool) else v


class SplitConfig(Strict):
    eval: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows for the eval split when no eval file is given.",
    )
    test: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of rows for the test split when no test file is given.",
    )
    stratify: bool = Field(
        True, description="Keep label proportions equal across splits (classification)."
    )
    max_eval_rows: int | None = Field(
        2000,
        gt=0,
        description="Cap on the eval split taken out of train (the rest stays in train; said on the console); None: no cap. An eval file is never capped.",
    )
    group_by: str | None = Field(
        None,
        description="Column whose rows stay together in one split (e.g. title: no article in two splits); eval/test take whole groups in a seeded order until they hold their share of rows; not stratified.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.eval + self.test >= 1.0:
            raise ValueError("split.eval + split.test must be below 1.0 so train keeps rows")
        return self


class LeakageConfig(Strict):
    check: bool = Field(
        True, description="Report exact and near-duplicate overlap between train and eval/test."
    )
    remove_from_train: bool = Field(False, description="Drop train rows that leak into eval/test.")
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Near-duplicate similarity threshold for leakage."
    )
    near: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Near-duplicate (MinHash) leakage: on, off (exact hashing only), or auto: on when clean.near_dedupe is on or train has at most 20,000 rows.",
    )


class BalanceConfig(Strict):
    column: str | None = Field(
        None,
        description="Column to balance (label or a group column such as a demographic attribute).",
    )
    strategy: Literal["none", "undersample", "oversample", "loss_weights"] = Field(
        "none", description="How to balance the train split."
    )


class DataConfig(Strict):
    train: str | list[str] | None = Field(
        None, description="Training file(s) or a datasets save_to_disk folder."
    )
    eval: str | list[str] | None = Field(
        None, description="Eval file(s); if absent, split from train."
    )
    test: str | list[str] | None = Field(
        None, description="Test file(s); if absent, split from train when split.test > 0."
    )
    format: str = Field("auto", description="Row format; auto detects from the columns.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in format_names():
            raise ValueError(f"unknown format {v!r} (known: {', '.join(format_names())})")
        return v

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map lmtune field -> your column, e.g. {text: review, label: stars}.",
    )
    labels: list[str] | None = Field(
        None,
        description="Allowed labels in order; rows with other labels are rejected. None: collected from train.",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, v: Any) -> Any:
        # YAML reads `labels: [0, 1]` as ints; labels are compared as strings everywhere.
        return [str(x) for x in v] if isinstance(v, list) else v

    max_bad_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this fraction of rows is rejected.",
    )
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning steps.")
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Splitting when eval/test files are absent."
    )
    leakage: LeakageConfig = Field(
        default_factory=LeakageConfig, description="Train/eval/test overlap check."
    )
    balance: BalanceConfig = Field(
        default_factory=BalanceConfig, description="Balancing by a label or group column."
    )
    template: Literal["auto", "alpaca", "chatml"] = Field(
        "auto",
        description="Prompt template for instruction/chat rows; auto uses the tokenizer's chat template when present.",
    )
    packing: bool = Field(
        False,
        description="Pack several SFT examples per sequence (block-diagonal attention, no cross-talk).",
    )
    bucketing: bool = Field(
        True, description="Group examples of similar length into batches to cut padding."
    )
    limit: int | None = Field(
        None, gt=0, description="Use at most this many rows per input file (quick experiments)."
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of csv/tsv/jsonl/json/txt inputs (e.g. latin-1, cp1252); a byte-order mark is skipped.",
    )
    # Out-of-core data: encoding in worker processes, the on-disk cache, hub/streaming inputs.
    num_proc: int = Field(
        1, ge=1, description="Processes that tokenize (datasets.map num_proc) on a cache miss."
    )
    cache: bool = Field(
        True,
        description="Reuse prepared and tokenized data across runs (an Arrow cache keyed by the data files, tokenizer, template and every data/encoding setting).",
    )
    cache_dir: str | None = Field(
        None,
        description="Where the data cache lives; None: $LMTUNE_CACHE_DIR, else $XDG_CACHE_HOME/lmtune/data, else ~/.cache/lmtune/data.",
    )
    streaming: bool = Field(
        False,
        description="Read hf:// and datasets inputs as a stream, taking only the rows train.max_steps needs (eval/test by a hash of each row); needs train.max_steps.",
    )


class EarlyStopConfig(Strict):
    metric: str = Field(
        "eval_loss", description="Eval metric that decides the best checkpoint and early stopping."
    )
    mode: Literal["min", "max"] = Field(
        "min", description="Whether lower or higher is better for the metric."
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement (None: never stop early).",
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="Smallest change that counts as an improvement."
    )


class AverageConfig(Strict):
    """Weight averaging (SWA / checkpoint averaging) over the tail of training."""

    start: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Fraction of the run's optimizer steps after which snapshots enter the mean (0.34 of 3 epochs: the last two).",
    )
    every: int = Field(
        50, ge=1, description="Optimizer steps between two snapshots (the last step is always one)."
    )


class TrainConfig(Strict):
    epochs: float = Field(
        3.0, gt=0, description="Passes over the training data (ignored when max_steps > 0)."
    )
    max_steps: int = Field(
        -1, description="Optimizer steps to run; -1 derives it from epochs (0 is refused)."
    )
    batch_size: int = Field(16, gt=0, description="Examples per micro-batch per process.")
    eval_batch_size: int = Field(64, gt=0, description="Examples per eval batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(
        5e-5,
        gt=0,
        description="Peak learning rate; unset: picked per adapter (lora/dora 2e-4, full 5e-5, head 1e-3).",
    )
    head_lr: float | None = Field(
        None,
        gt=0,
        description="Learning rate for a freshly initialised task head (None: same as lr).",
    )
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW weight decay (never applied to biases and norms)."
    )
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise LR decay: block i of n trains at lr * decay ** (n - i), embeddings lowest, heads at lr (1: off; 0.8-0.95 is usual for encoders).",
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="LR schedule after warmup."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of total steps.")
    warmup_steps: int = Field(
        0, ge=0, description="Warmup steps (overrides warmup_ratio when > 0)."
    )
    max_grad_norm: float | None = Field(
        1.0, description="Gradient clipping norm (None: no clipping)."
    )
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "auto",
        description="fp32, bf16 autocast, or fp16 autocast with dynamic loss scaling (GPUs without bf16); auto picks bf16 where the hardware supports it.",
    )
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"] = Field(
        "adamw",
        description="adamw: torch's fused AdamW; adamw_8bit / paged_adamw_8bit: bitsandbytes' 8-bit AdamW (states in 8 bits; paged: spill to CPU under memory pressure, CUDA); adafactor: factored second moments; sgd: momentum 0.9.",
    )
    eval_precision: Literal["fp32", "train"] = Field(
        "fp32",
        description="Precision of the evaluations during training, which pick the best checkpoint. fp32: as `lmtune eval`, serve and the test split run the saved weights, so the kept checkpoint is chosen by the figure users will see (bf16 autocast can move a few predictions); train: the training precision (faster on large eval sets).",
    )
    eval_every: int = Field(
        0, ge=0, description="Evaluate every N optimizer steps (0: only per epoch)."
    )
    eval_each_epoch: bool = Field(True, description="Evaluate at the end of each epoch.")
    log_every: int = Field(10, gt=0, description="Log train loss every N optimizer steps.")
    save_every: int = Field(
        0, ge=0, description="Checkpoint every N optimizer steps (0: at each evaluation)."
    )
    keep_last: int = Field(
        2, ge=1, description="Checkpoints to keep (the best one is always kept)."
    )
    early_stopping: EarlyStopConfig = Field(
        default_factory=EarlyStopConfig, description="Best-model selection and early stopping."
    )
    average: AverageConfig | None = Field(
        None,
        description="Average the trainable weights over the tail of training; at the end the average is evaluated and kept when it scores at least as well as the best snapshot (None: off).",
    )
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="Class-weighted loss for imbalanced labels (classification)."
    )
    eval_before: bool = Field(
        True, description="Evaluate once before training (the untrained baseline in the summary)."
    )
    compile: bool = Field(
        False, description="torch.compile the model (helps long runs; costs start-up time)."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each transformer block in backward instead of keeping its "
        "activations (less memory, about one more forward pass of time).",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Several processes: the strategy (none, ddp, fsdp) and its options.",
    )

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        # 0 used to mean "use epochs" silently; only -1 says that, so a typo cannot train 3 epochs.
        if v == 0 or v < -1:
            raise ValueError("must be a positive number of steps, or -1 to train for train.epochs")
        return v

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        # train.num_workers was documented as DataLoader workers but read by nothing: batches
        # are collated in the main process. Old configs (and run folders) keep loading.
        if isinstance(data, dict) and "num_workers" in data:
            data = dict(data)
            if data.pop("num_workers") not in (0, None):
                import warnings

                warnings.warn(
                    "train.num_workers is ignored and will be refused in a later version: it "
                    "never did anything (lmtune collates batches in the main process); remove it",
                    stacklevel=2,
                )
        return data


class TrackingConfig(Strict):
    """Experiment tracking beside metrics.jsonl: off by default; the defaults write local files only."""

    tensorboard: bool = Field(
        False,
        description='Write every train/eval event of metrics.jsonl as TensorBoard scalars (needs `pip install "lmtune[tracking]"`).',
    )
    tensorboard_dir: str | None = Field(
        None,
        description="Folder for this run's TensorBoard event files; None: RUN/tensorboard (view with `tensorboard --logdir RUN/tensorboard`).",
    )
    mlflow: bool = Field(
        False,
        description='Log the run to MLflow: the resolved config as parameters, train/eval metrics per step, summary metrics, report and model card (needs `pip install "lmtune[tracking]"`).',
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking store, e.g. sqlite:///runs/mlflow.db to share one store between runs; None: sqlite:///RUN/mlflow.db, with artifacts in RUN/mlartifacts.",
    )
    mlflow_experiment: str | None = Field(
        None, description="MLflow experiment name (created when missing); None: run.name."
    )


class PreferenceConfig(Strict):
    """Preference learning (tasks reward, dpo, orpo): losses, reference model, truncation."""

    loss: Literal["sigmoid", "robust", "ipo", "hinge", "simpo"] = Field(
        "sigmoid",
        description="DPO-family loss (task dpo): sigmoid (DPO), robust (rDPO), ipo, hinge, or simpo (length-normalised, no reference model).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="DPO/IPO/hinge/SimPO temperature beta (IPO: its tau); higher keeps the policy closer to the reference.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Probability that a preference label is flipped: conservative DPO for sigmoid/simpo, rDPO for robust.",
    )
    simpo_gamma: float = Field(
        0.5,
        description="SimPO target reward margin gamma (absolute, in reward units; TRL's CPO simpo_gamma).",
    )
    orpo_lambda: float = Field(
        0.1,
        gt=0,
        description="ORPO weight lambda of the odds-ratio term beside the chosen-response NLL (TRL's ORPO beta).",
    )
    reference: Literal["auto", "precompute"] = Field(
        "auto",
        description="DPO reference log-probs. auto: LoRA/DoRA use the base with the adapter disabled at each step, full/head fine-tuning precompute them once (cached in the run folder); precompute: always precompute.",
    )
    ties: Literal["drop", "keep"] = Field(
        "drop",
        description="Pairwise rows whose preference is a tie: drop (counted in rejects.jsonl) or keep (task reward only: a tie trains both rewards toward equal, target P(a > b) = 0.5, and is left out of pairwise_accuracy).",
    )
    max_prompt_length: int | None = Field(
        None,
        gt=0,
        description="Prompts longer than this keep their last tokens (the end, next to the response); None: prompts are not cut, and a prompt that leaves no room for a response rejects the row.",
    )


class RLHFConfig(Strict):
    """Online RL from a reward (task rlhf): sample, score, group-relative advantages, KL, clip."""

    reward: str | None = Field(
        None,
        description="Where rewards come from: a reward-model run or model folder (a `task: reward` run), or a Python function as module:function (called as f(prompt, completion) -> float; imported from the current directory or PYTHONPATH).",
    )
    samples_per_prompt: int = Field(
        4,
        ge=2,
        description="Completions sampled per prompt each step (k); advantages compare the k completions of one prompt, so at least 2.",
    )
    max_new_tokens: int = Field(
        32,
        gt=0,
        description="Most tokens sampled per completion (sampling stops earlier at the end-of-sequence token).",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature for training rollouts; log-probs in the loss use the same temperature.",
    )
    top_p: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="Nucleus sampling: sample from the smallest token set with this much probability (1.0: off).",
    )
    advantage: Literal["rloo", "grpo"] = Field(
        "rloo",
        description="Group-relative advantage: rloo (reward minus the mean of the other k-1 completions), grpo (reward minus the group mean, divided by the group standard deviation).",
    )
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="Weight beta of the KL penalty against the reference (the initial model); 0 switches the reference off.",
    )
    kl_in: Literal["loss", "reward"] = Field(
        "loss",
        description="Where the KL penalty goes: loss (GRPO: beta * per-token k3 estimate added to the loss) or reward (PPO/RLOO: beta * the summed per-token log-ratio subtracted from each completion's reward before advantages).",
    )
    clip_range: float = Field(
        0.2,
        gt=0,
        description="PPO ratio clipping epsilon: the policy ratio to the sampling-time policy is clipped to [1-eps, 1+eps]; only binds when updates_per_rollout > 1.",
    )
    updates_per_rollout: int = Field(
        1,
        ge=1,
        description="Optimizer steps on each set of sampled completions (PPO epochs, TRL's num_iterations); >1 reuses a rollout for the next steps, whose own prompts are then skipped.",
    )
    aggregation: Literal["sequence", "token_budget"] = Field(
        "sequence",
        description="Per-completion loss: sequence (mean over its tokens, GRPO) or token_budget (sum over its tokens / max_new_tokens, Dr. GRPO: no preference for short or long completions).",
    )
    eval_temperature: float = Field(
        0.0, ge=0, description="Sampling temperature for evaluation completions (0: greedy)."
    )
    eval_seed: int = Field(
        0,
        description="Seed for sampled evaluation completions (eval never disturbs the training random stream).",
    )
    reward_batch_size: int = Field(
        32, gt=0, description="Completions per forward pass of a reward model."
    )


#: train.lr when the config does not set it: adapters train best with a larger step than
#: full fine-tuning (peft and TRL recipes use 1e-4..2e-4 for LoRA, 1e-5..5e-5 for full).
DEFAULT_LR = {"lora": 2e-4, "dora": 2e-4, "full": 5e-5, "head": 1e-3}


class Config(Strict):
    """A whole run. Every section has defaults, so a config only states what differs."""

    # What loading did on the user's behalf (aliases read, task inferred, lr picked): the CLI
    # prints these, `config show` as comments.
    _notes: list[str] = PrivateAttr(default_factory=list)

    run: RunConfig = Field(default_factory=RunConfig, description="Run identity and output folder.")
    task: str = Field(
        "classification",
        description="What to train (tasks/__init__.py registers them): sft (causal LM), classification, reward (Bradley-Terry reward model), dpo or orpo (preference tuning of a causal LM), rlhf (online RL of a causal LM from a reward), qa (extractive QA).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    adapter: AdapterConfig = Field(
        default_factory=AdapterConfig, description="Which weights train."
    )
    data: DataConfig = Field(
        default_factory=DataConfig, description="Data loading, cleaning and splitting."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Optimisation and the training loop."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Experiment tracking: TensorBoard and MLflow (both off by default).",
    )
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="Preference learning (tasks reward, dpo, orpo).",
    )
    rlhf: RLHFConfig = Field(
        default_factory=RLHFConfig,
        description="Online RL from a reward model or reward function (task rlhf).",
    )
    forgetting: ForgettingConfig = Field(
        default_factory=ForgettingConfig,
        description="Forgetting: a reference set measured before and after training (forgetting.json), and mitigation (L2-SP, EWC, replay).",
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig,
        description="Post-release monitoring thresholds (`lmtune monitor`).",
    )
    qa: QAConfig = Field(
        default_factory=QAConfig, description="Extractive question answering (task qa)."
    )
    baselines: BaselinesConfig = Field(
        default_factory=BaselinesConfig,
        description="Zero-/few-shot baselines of the base model beside the fine-tuned one (task classification).",
    )
    search: SearchConfig = Field(
        default_factory=SearchConfig,
        description="Hyperparameter search run by `lmtune tune` (ignored by `lmtune train`).",
    )
    audit: AuditConfig = Field(
        default_factory=AuditConfig,
        description="Bias audit before and after training (CrowS-Pairs, counterfactual term swaps); also `lmtune audit`.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="Release gate and model registry for `lmtune pipeline` (ignored by `lmtune train`).",
    )

    @property
    def notes(self) -> list[str]:
        """What loading decided for the user (aliases, inferred task, lr per adapter)."""
        return self._notes

    @model_validator(mode="after")
    def _lr_per_adapter(self) -> Config:
        if "lr" not in self.train.model_fields_set:
            lr = DEFAULT_LR[self.adapter.type]
            # Not through validate_assignment: the dumped config must still say it was chosen
            # here (a dump sets lr explicitly, so a reload keeps this value).
            self.train.__dict__["lr"] = lr
        return self

    sections: dict[str, Any] = Field(
        default_factory=dict,
        description="Config sections that task modules declare (e.g. kto:); written at the top level.",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        spec(v)  # ValueError naming the known tasks
        return v

    @model_validator(mode="before")
    @classmethod
    def _collect_sections(cls, data: Any) -> Any:
        # A section a task module declares (its spec's section_model) is written at the top
        # level like the built-in ones; it is kept in `sections` and validated by its model.
        if isinstance(data, dict) and any(k in data for k in section_models()):
            data = dict(data)
            data["sections"] = {
                **(data.get("sections") or {}),
                **{k: data.pop(k) for k in section_models() if k in data},
            }
        return data

    @field_validator("sections")
    @classmethod
    def _validate_sections(cls, v: dict[str, Any]) -> dict[str, Any]:
        models = section_models()
        unknown = [k for k in v if k not in models]
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(unknown)}")
        return {k: load_object(models[k]).model_validate(value) for k, value in v.items()}

    @model_serializer(mode="wrap")
    def _flat_sections(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        out.update(out.pop("sections", None) or {})
        return out

    def section(self, name: str) -> Any:
        """A task-declared config section (its defaults when the config leaves it out)."""
        if name in self.sections:
            return self.sections[name]
        return load_object(section_models()[name])()

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        problems = self._format_problems() + self._section_problems()
        problems += self._preference_problems()
        problems += self._rlhf_problems()
        problems += self.forgetting.problems(self.task, self.adapter.type)
        problems += self._qa_problems()
        task = spec(self.task)
        problems += self._quantization_problems()
        if self.baselines.enabled and not task.labelled:
            problems.append(f"baselines.enabled only applies to task {_tasks_where('labelled')}")
        if self.data.packing and not task.packs:
            problems.append(f"data.packing only applies to task {_tasks_where('packs')}")
        if self.train.class_weights != "none" and not task.labelled:
            problems.append(f"train.class_weights only applies to task {_tasks_where('labelled')}")
        if self.data.balance.strategy == "loss_weights" and not task.labelled:
            problems.append(
                "data.balance.strategy loss_weights only applies to task "
                + _tasks_where("labelled")
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _quantization_problems(self) -> list[str]:
        if self.model.quantization is None:
            return []
        problems = []
        if self.adapter.type in ("full", "head"):
            problems.append(
                f"model.quantization: a {self.model.quantization.bits}-bit base cannot train "
                f"(adapter.type {self.adapter.type}): set adapter.type lora or dora (QLoRA), or "
                "remove model.quantization"
            )
        if spec(self.task).model != "causal":
            problems.append(
                f"model.quantization applies to causal-LM tasks ({', '.join(n for n, t in TASKS.items() if t.model == 'causal')}), not "
                f"task {self.task}: remove model.quantization"
            )
        return problems

    def _format_problems(self) -> list[str]:
        task, fmt = spec(self.task), self.data.format
        if fmt == "auto" or fmt in task.formats:
            return []
        needs = _NEEDS.get(task.formats[0], f"reads data.format {', '.join(task.formats)} or auto")
        users = [n for n, s in TASKS.items() if fmt in s.formats]
        return [
            f"task {self.task} {needs}, not data.format {fmt}"
            + (f" (data.format {fmt}: use task {', '.join(users)})" if users else "")
        ]

    def _section_problems(self) -> list[str]:
        # Compare with the defaults (not fields_set) so a dumped config still loads.
        problems = []
        for section, owners in section_owners().items():
            if self.task in owners:
                continue
            if section in section_models():
                default = load_object(section_models()[section])()
                given = section in self.sections and self.sections[section] != default
            else:
                value = getattr(self, section)
                given = value != type(value)()
            if given:
                which = "task" if len(owners) == 1 else "tasks"
                problems.append(
                    f"the {section} section only applies to {which} {', '.join(owners)}"
                )
        return problems

    def _preference_problems(self) -> list[str]:
        pref, task = self.preference, spec(self.task)
        problems = []
        if pref.ties == "keep" and not task.ties:
            problems.append(
                f"preference.ties: keep is for task {_tasks_where('ties')} (a tie is a target "
                f"of 0.5 there); task {self.task} has no use for ties: use preference.ties: drop"
            )
        if task.own_loss and pref.loss != "sigmoid":
            problems.append(
                f"preference.loss picks a DPO-family loss; task {self.task} has its own"
            )
        if pref.label_smoothing > 0 and pref.loss in ("ipo", "hinge"):
            problems.append(
                f"preference.label_smoothing does not apply to preference.loss {pref.loss} "
                "(use sigmoid, robust or simpo)"
            )
        return problems

    def _rlhf_problems(self) -> list[str]:
        rl = self.rlhf
        if spec(self.task).section != "rlhf":
            return []
        problems = []
        if not rl.reward:
            problems.append(
                "task rlhf needs rlhf.reward: a reward-model run folder or a Python "
                "function as module:function (e.g. examples.rewards:vowel_share)"
            )
        if rl.max_new_tokens >= self.model.max_length:
            problems.append(
                f"rlhf.max_new_tokens ({rl.max_new_tokens}) must be below "
                f"model.max_length ({self.model.max_length}) to leave room for the prompt"
            )
        return problems

    def _qa_problems(self) -> list[str]:
        problems: list[str] = []
        if spec(self.task).section != "qa":
            return problems
        if self.qa.doc_stride + 32 > self.model.max_length:
            # Each window holds the question, 3 special tokens, doc_stride old and some new context.
            problems.append(
                f"qa.doc_stride ({self.qa.doc_stride}) must be at least 32 below "
                f"model.max_length ({self.model.max_length}) to leave room for the "
                "question and new context in each window"
            )
        return problems


def _parse_value(raw: str) -> Any:
    """Parse an override value with YAML rules so `lr=1e-4`, `x=true`, `l=[a,b]` get real types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(
    data: dict[str, Any], overrides: list[str], notes: list[str] | None = None
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in order onto a nested dict (returns the same dict).

    Aliases (`learning_rate=1e-4`, config_aliases.py) set their canonical key, so an override
    replaces the file's value however either spells it; each is noted in `notes`.
    """
    from lmtune.config_aliases import canonical_override_key, resolve, set_path

    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (example: train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        alias = canonical_override_key(key)
        if alias is None:
            set_path(data, key, _parse_value(raw))
            continue
        for canonical, value in resolve(alias, _parse_value(raw)).items():
            set_path(data, canonical, value)
            if notes is not None:
                notes.append(f"{canonical} (given as {key})")
    return data


def _known_keys() -> list[str]:
    """Every dotted key and section name (for "did you mean" suggestions)."""
    keys = [k for k, _, _ in describe_fields()]
    return list(dict.fromkeys([*keys, *(k.rsplit(".", 1)[0] for k in keys if "." in k)]))


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {len(err.errors())} problem(s) in the config:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            from lmtune.config_aliases import suggest

            close = suggest(path, _known_keys())
            hint = f"did you mean {' or '.join(close)}? " if close else "check the spelling; "
            msg = f"unknown key ({hint}`lmtune config show --fields` lists the keys)"
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
            raise UserError(
                f"config file {p} does not exist (check the path; shipped examples are in configs/)"
            )
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(
                f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(
                f"{p}: the top level must be a mapping of sections (run, model, data, train, ...)"
            )
        data = loaded
    from lmtune.config_aliases import normalize, normalize_values

    notes = normalize(data, source)
    if path is not None and isinstance(data.get("run", {}), dict):
        # A run named after its config file: report titles and logs say which run it is.
        data.setdefault("run", {}).setdefault("name", Path(path).stem)
    apply_overrides(data, list(overrides or []), notes)
    notes += normalize_values(data)
    if "task" not in data:
        from lmtune.data.infer import infer_task

        task, why = infer_task(data)
        if task is not None:
            data["task"] = task
            notes.append(f"task {task} ({why}; set task: to choose another)")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_errors(err, source)) from None
    if "lr" not in cfg.train.model_fields_set:
        notes.append(f"train.lr {cfg.train.lr:g} (the default for adapter {cfg.adapter.type})")
    cfg._notes = notes
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what `config show` prints and the run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(
    model: type[BaseModel] = Config, prefix: str = ""
) -> list[tuple[str, str, str]]:
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
