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
from lmtune.config import ModelConfig
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
) -> None:
    """Write model (adapter or full weights), tokenizer and lmtune_model.json atomically.

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
    meta: dict[str, Any] = {
        **extra,
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
            # Embeddings are never stored in the adapter: load_model rebuilds a grown vocab
            # deterministically, and "auto" would query the hub for the base config.
            model.save_pretrained(str(tmp), save_embedding_layers=False)
        else:
            model.save_pretrained(str(tmp))
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


def load_trained(
    model_dir: Path, for_training: bool = False
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a folder written by save_model/export_merged: (model, tokenizer, meta).

    Adapters are applied to a freshly loaded base (trainable when for_training); full
    models load directly. The model is in train mode when for_training, else eval mode.
    """
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # a damaged folder: one readable message instead of a traceback
        raise UserError(f"could not load the tokenizer saved in {model_dir}: {exc}") from exc
    if for_training:
        tokenizer.padding_side = "right"
    task, labels = meta["task"], meta.get("labels")
    if _is_adapter(model_dir):
        base_cfg = ModelConfig(
            name_or_path=meta["base_model"],
            revision=meta.get("base_revision"),
            pooling=meta.get("pooling", "cls"),
        )
        base = load_model(base_cfg, task, tokenizer, labels=labels)
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 API that warns of its own deprecation.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            model: torch.nn.Module = PeftModel.from_pretrained(
                base, str(model_dir), is_trainable=for_training
            )
    else:
        model = load_model(ModelConfig(name_or_path=str(model_dir)), task, tokenizer, labels=labels)
    # from_pretrained returns eval mode; a model reloaded to continue training must train.
    model.train(for_training)
    return model, tokenizer, meta


def export_merged(model_dir: Path, out_dir: Path) -> Path:
    """Write a standalone model that plain transformers Auto* classes load.

    LoRA/DoRA adapters are merged into the base weights (merge_and_unload); lmtune_model.json
    is copied with merged: true. Full models are copied as they are.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = read_meta(model_dir)
    if model_dir.resolve() == out_dir.resolve():
        raise UserError(
            f"export target {out_dir} is the model folder itself; choose another folder"
        )
    if not _is_adapter(model_dir):
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        return out_dir
    model, tokenizer, meta = load_trained(model_dir)
    merged = model.merge_and_unload()
    meta = {**meta, "merged": True}
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if (model_dir / "data_profile.json").is_file():  # `lmtune monitor` compares inputs with it
            shutil.copy2(model_dir / "data_profile.json", tmp / "data_profile.json")
        if (model_dir / "MODEL_CARD.md").is_file():  # the card travels with the released weights
            shutil.copy2(model_dir / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
    return out_dir
