"""Decide which weights train: all (full), the task head only (head), or peft LoRA/DoRA.

The task head is found by name on the unwrapped transformers model (classifier, score,
lm_head, ...), so the same code serves BERT, Llama, Qwen2 and GPT-2. LoRA target modules
default to the attention and MLP projections of the architecture, checked against the
model's real module names so a typo or an unknown architecture fails before training.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers.pytorch_utils import Conv1D

from lmtune.config import AdapterConfig
from lmtune.errors import UserError
from lmtune.tasks import spec

# Top-level attribute names of task heads in transformers models, in lookup order.
# DistilBERT's head is pre_classifier + classifier, so both are listed.
HEAD_NAMES = ("pre_classifier", "classifier", "score", "qa_outputs", "lm_head")

# Per-architecture LoRA targets (module-name suffixes): attention + MLP projections.
# Wider than peft's q,v defaults: adapting the MLP too matters for task quality.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_BERT_LIKE = ["query", "key", "value", "dense"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    **{
        a: _LLAMA_LIKE
        for a in (
            "llama",
            "qwen2",
            "qwen3",
            "mistral",
            "mixtral",
            "gemma",
            "gemma2",
            "olmo",
            "olmo2",
            "smollm3",
        )
    },
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    **{a: _BERT_LIKE for a in ("bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
}


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the task-head submodules (children of the transformers model), e.g. ['score']."""
    base = _base(model)
    children = dict(base.named_children())
    return [name for name in HEAD_NAMES if name in children]


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already skips shared (tied) tensors
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _linear_suffixes(model: torch.nn.Module) -> set[str]:
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, Conv1D)):
            names.add(name.rsplit(".", 1)[-1])
    return names


def _resolve_targets(model: torch.nn.Module, acfg: AdapterConfig) -> list[str] | str:
    """Turn adapter.target_modules into suffixes that exist in model (or 'all-linear')."""
    base = _base(model)
    available = _linear_suffixes(base) - set(head_module_names(base))
    if acfg.target_modules == "all-linear":
        return "all-linear"
    if acfg.target_modules == "auto":
        model_type = getattr(base.config, "model_type", "")
        wanted = DEFAULT_TARGETS.get(model_type)
        found = [t for t in wanted or [] if t in available]
        # Unknown architecture: peft's all-linear (every linear layer except the output head).
        return found or "all-linear"
    missing = [t for t in acfg.target_modules if t not in available]
    if missing:
        raise UserError(
            f"adapter.target_modules: {missing} match no linear layer of this model; "
            f"available names: {sorted(available)} (or use auto / all-linear)"
        )
    return list(acfg.target_modules)


def _set_trainable(model: torch.nn.Module, names: list[str]) -> None:
    model.requires_grad_(False)
    for name in names:
        getattr(model, name).requires_grad_(True)


def apply_adapter(
    model: torch.nn.Module, acfg: AdapterConfig, task: str, gradient_checkpointing: bool = False
) -> torch.nn.Module:
    """Prepare model for training per acfg.type; returns the model to train (maybe peft-wrapped).

    full: every weight trains. head: only the task head (classifier/score/lm_head) trains;
    for tied LMs that includes the input embeddings. lora/dora: peft adapters on the target
    modules, plus modules_to_save (auto: the classification head, nothing for sft).
    A 4/8-bit base (model.quantization) is first prepared for k-bit training (peft: frozen,
    float weights in fp32, checkpointing when asked); only lora/dora train on it.
    """
    try:
        task_type = TaskType[spec(task).peft_task_type]
    except ValueError as exc:
        raise UserError(f"task {task!r} has no adapter setup ({exc})") from None
    from lmtune.models.quantize import is_quantized, prepare_for_training

    if is_quantized(model):
        if acfg.type in ("full", "head"):
            raise UserError(
                f"adapter.type {acfg.type} cannot train a quantized base (model.quantization): "
                "its weights are frozen 4/8-bit integers; use adapter.type lora or dora"
            )
        model = prepare_for_training(model, gradient_checkpointing)
    heads = head_module_names(model)
    if acfg.type == "full":
        model.requires_grad_(True)
        return model
    if acfg.type == "head":
        if not heads:
            raise UserError(
                f"adapter.type head: found no task head ({', '.join(HEAD_NAMES)}) on "
                f"{type(model).__name__}; use adapter.type lora or full"
            )
        _set_trainable(model, heads)
        return model

    targets = _resolve_targets(model, acfg)
    if acfg.modules_to_save == "auto":
        # A freshly initialised classifier must train in full; an LM head stays frozen.
        seq_cls = task_type == TaskType.SEQ_CLS
        to_save = [h for h in heads if h != "lm_head"] if seq_cls else None
        # QUESTION_ANS: peft adds qa_outputs to modules_to_save by itself (listing it twice
        # would wrap it twice).
    elif task_type == TaskType.QUESTION_ANS:
        to_save = [m for m in acfg.modules_to_save if m != "qa_outputs"] or None
    else:
        to_save = list(acfg.modules_to_save) or None
    model_type = getattr(model.config, "model_type", "")
    lcfg = LoraConfig(
        r=acfg.r,
        lora_alpha=acfg.alpha,
        lora_dropout=acfg.dropout,
        target_modules=targets,
        bias=acfg.bias,
        use_dora=acfg.type == "dora",
        modules_to_save=to_save,
        task_type=task_type,
        # GPT-2 stores its projections as Conv1D (weight transposed); peft needs to know.
        fan_in_fan_out=model_type == "gpt2",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 API that warns of its own deprecation.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            return get_peft_model(model, lcfg)
    except ValueError as exc:
        raise UserError(f"adapter {acfg.type} on {type(model).__name__}: {exc}") from exc
