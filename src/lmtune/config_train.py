"""Config sections for optimisation and the training loop (`train:`, with early stopping,
weight averaging and the distributed strategy) and for experiment tracking (`tracking:`).
config.py adds each as a section of a run config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmtune.config_base import Strict
from lmtune.runtime.config import DistributedConfig


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


#: train.lr when the config does not set it: adapters train best with a larger step than
#: full fine-tuning (peft and TRL recipes use 1e-4..2e-4 for LoRA, 1e-5..5e-5 for full).
DEFAULT_LR = {"lora": 2e-4, "dora": 2e-4, "full": 5e-5, "head": 1e-3}
