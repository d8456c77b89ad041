"""Config sections for the model a run starts from: the base (`model:`, with its optional
`model.quantization:`) and which of its weights train (`adapter:`). config.py adds each as a
section of a run config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmtune.config_base import Strict


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
