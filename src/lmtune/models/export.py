"""Save, reload and merge trained models in formats other tools read directly.

A model folder holds either a peft adapter (adapter_config.json + adapter_model.safetensors,
loadable with PeftModel.from_pretrained) or a full transformers model (config.json +
model.safetensors), plus the tokenizer and `lmtune_model.json`, which records what is needed
to rebuild it: task, base model, labels, adapter type. Every folder is written into a
temporary sibling and renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lmtune.atomic import atomic_dir
from lmtune.config import ModelConfig, QuantizationConfig
from lmtune.errors import UserError
from lmtune.models.load import BUILTIN_MODELS, load_model, resolve_model_path
from lmtune.tasks import SPECS, spec

META_FILE = "lmtune_model.json"
META_VERSION = 1


def _portable_base(name_or_path: str) -> str:
    """builtin:NAME when the path is a built-in model's folder (portable across machines)."""
    for name in BUILTIN_MODELS:
        try:
            if Path(resolve_model_path(f"builtin:{name}")) == Path(name_or_path).resolve():
                return f"builtin:{name}"
        except UserError:
            continue  # that builtin's package is not installed here
    return name_or_path


def _is_local_base(given: str | None) -> bool:
    """True when the configured base is a folder on this machine (not a hub id, not builtin)."""
    return bool(given) and not given.startswith("builtin:") and Path(given).expanduser().exists()


def _recorded_base(given: str | None, resolved: str) -> str:
    """What adapter_config.json names as the base: the config's model.name_or_path as written
    (a hub id stays a hub id; a relative folder stays relative, so the run folder can move
    with its base), except builtin:NAME, which only lmtune understands: there the folder."""
    if not given or given.startswith("builtin:"):
        return resolved
    return given


def _task_of(base: torch.nn.Module) -> str:
    # The first registered task that loads this kind of model (classification, sft, qa).
    cls = type(base).__name__
    kind = (
        "classifier"
        if cls.endswith("ForSequenceClassification")
        else "causal"
        if cls.endswith(("ForCausalLM", "LMHeadModel"))
        else "span"
        if cls.endswith("ForQuestionAnswering")
        else None
    )
    for s in SPECS:
        if s.model == kind:
            return s.name
    raise UserError(f"cannot tell the task of a {cls}; pass extra={{'task': ...}} to save_model")


def _labels(base: torch.nn.Module, task: str) -> list[str] | None:
    if spec(task).model != "classifier":
        return None
    id2label = base.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def save_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    extra: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model (adapter or full weights), tokenizer and lmtune_model.json atomically.

    `state_dict` replaces model.state_dict() (FSDP: the whole weights gathered onto rank 0).

    extra's keys (format, template, max_length, ...) go to the top level of the metadata,
    where readers look for them. Its "task" and "adapter" override the values inferred from
    the model (e.g. adapter "head" for a head-only run); base_model, base_revision, labels,
    merged and format_version always come from the model itself.
    """
    extra = dict(extra or {})
    is_peft = isinstance(model, PeftModel)
    base = model.get_base_model() if is_peft else model
    task = extra.get("task") or _task_of(base)
    if is_peft:
        pcfg = model.peft_config["default"]
        adapter = "dora" if getattr(pcfg, "use_dora", False) else "lora"
        base_name = pcfg.base_model_name_or_path or base.config.name_or_path
    else:
        adapter = "full"
        base_name = base.config.name_or_path
    given = extra.get("base_model")  # model.name_or_path as the config wrote it
    meta: dict[str, Any] = {
        **extra,
        "base_model_local": _is_local_base(given),
        "format_version": META_VERSION,
        "task": task,
        "base_model": _portable_base(str(base_name)),
        # transformers records the resolved hub commit; reloading the base uses the same one.
        "base_revision": getattr(base.config, "_commit_hash", None),
        "adapter": extra.get("adapter") or adapter,
        "merged": False,
        "labels": _labels(base, task),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        if is_peft:
            resolved = pcfg.base_model_name_or_path
            pcfg.base_model_name_or_path = _recorded_base(given, str(base_name))
            try:
                # Embeddings are never stored in the adapter: load_model rebuilds a grown
                # vocab deterministically, and "auto" would query the hub for the base config.
                model.save_pretrained(str(tmp), save_embedding_layers=False, state_dict=state_dict)
            finally:
                pcfg.base_model_name_or_path = resolved
            # peft's README.md is a blank template ("Model Card for Model ID"); lmtune writes
            # the real card there (the same text as MODEL_CARD.md) when the run ends.
            (tmp / "README.md").unlink(missing_ok=True)
        else:
            model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_meta(model_dir: Path) -> dict[str, Any]:
    """lmtune_model.json of a saved model folder (UserError when absent or unreadable)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise UserError(
            f"{model_dir} is not an lmtune model folder (no {META_FILE}); "
            "point at a run's model/ folder"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc}); the folder is damaged, re-export it"
        ) from exc


def _is_adapter(model_dir: Path) -> bool:
    # The files decide, not meta["adapter"] (which callers may override, e.g. to "head").
    return (model_dir / "adapter_config.json").is_file()


def _load_base(
    meta: dict[str, Any], tokenizer: PreTrainedTokenizerBase, dequantize_to: torch.dtype | None
) -> torch.nn.Module:
    """The base model an adapter folder was trained on (quantized again for a QLoRA adapter,
    or de-quantized to `dequantize_to`: the float weights the quantized forward multiplies by)."""
    quant = meta.get("quantization")
    base_cfg = ModelConfig(
        name_or_path=meta["base_model"],
        revision=meta.get("base_revision"),
        pooling=meta.get("pooling", "cls"),
        quantization=QuantizationConfig(**quant) if quant else None,
    )
    base = load_model(base_cfg, meta["task"], tokenizer, labels=meta.get("labels"))
    if quant and dequantize_to is not None:
        from lmtune.models.quantize import dequantize

        base = dequantize(base, dequantize_to)
    return base


def load_trained(
    model_dir: Path, for_training: bool = False, dequantize_to: torch.dtype | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a folder written by save_model/export_merged: (model, tokenizer, meta).

    Adapters are applied to a freshly loaded base (trainable when for_training); full
    models load directly. The model is in train mode when for_training, else eval mode.
    A QLoRA adapter gets its quantized base back, or that base de-quantized to
    `dequantize_to` (what export merges into).
    """
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # a damaged folder: one readable message instead of a traceback
        raise UserError(f"could not load the tokenizer saved in {model_dir}: {exc}") from exc
    if for_training:
        tokenizer.padding_side = "right"
    if _is_adapter(model_dir):
        base = _load_base(meta, tokenizer, dequantize_to=dequantize_to)
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 API that warns of its own deprecation.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            model: torch.nn.Module = PeftModel.from_pretrained(
                base, str(model_dir), is_trainable=for_training
            )
    else:
        model = load_model(
            ModelConfig(name_or_path=str(model_dir)),
            meta["task"],
            tokenizer,
            labels=meta.get("labels"),
        )
    # from_pretrained returns eval mode; a model reloaded to continue training must train.
    model.train(for_training)
    return model, tokenizer, meta


EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def export_merged(model_dir: Path, out_dir: Path, dtype: str | None = None) -> Path:
    """Write a standalone model that plain transformers Auto* classes load.

    LoRA/DoRA adapters are merged into the base weights (merge_and_unload); lmtune_model.json
    is copied with merged: true. A QLoRA adapter is merged into its base DE-QUANTIZED in fp32
    (never into the 4-bit weights: rounding the sum back to 4 bits changes the model). `dtype`
    (bf16, fp16, fp32) is the dtype of the written weights; None keeps fp32 for merges. Full
    models are copied as they are, or re-saved in `dtype` when one is given.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = read_meta(model_dir)
    if model_dir.resolve() == out_dir.resolve():
        raise UserError(
            f"export target {out_dir} is the model folder itself; choose another folder"
        )
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise UserError(f"export --dtype {dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    if not _is_adapter(model_dir) and dtype is None:
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        return out_dir
    model, tokenizer, meta = load_trained(model_dir, dequantize_to=torch.float32)
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    if dtype is not None:
        merged.to(EXPORT_DTYPES[dtype])
    meta = {**meta, "merged": _is_adapter(model_dir)}
    if meta.get("quantization"):
        # The export is a plain float model: record where it came from, not how to quantize.
        meta["dequantized_from"] = meta.pop("quantization")
    if dtype is not None:
        meta["dtype"] = dtype
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if (model_dir / "data_profile.json").is_file():  # `lmtune monitor` compares inputs with it
            shutil.copy2(model_dir / "data_profile.json", tmp / "data_profile.json")
        if (model_dir / "MODEL_CARD.md").is_file():  # the card travels with the released weights
            from lmtune.models.readme import write_readme

            shutil.copy2(model_dir / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
            write_readme(tmp)
    return out_dir
