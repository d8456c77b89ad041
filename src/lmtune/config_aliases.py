"""The ecosystem's names for lmtune's config keys (TRL/HF TrainingArguments, Axolotl, LLaMA-Factory).

A user who writes `learning_rate: 2e-4` or `micro_batch_size: 4` means `train.lr` and
`train.batch_size`; those names are accepted anywhere a key is (top level, inside the
matching section, or as a `key=value` override) and rewritten to the canonical key before
validation. Every rewrite is kept as a note so `config show` can say which alias it read.
Any other unknown key gets the closest known keys ("did you mean train.lr?").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from lmtune.errors import UserError

#: alias -> canonical dotted key. Written at the top level, or inside the section of the
#: canonical key (`train: {learning_rate: 1e-4}`), or as an override (`learning_rate=1e-4`).
KEY_ALIASES: dict[str, str] = {
    "learning_rate": "train.lr",
    "num_epochs": "train.epochs",
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size",
    "eval_batch_size": "train.eval_batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "max_steps": "train.max_steps",
    "weight_decay": "train.weight_decay",
    "warmup_ratio": "train.warmup_ratio",
    "warmup_steps": "train.warmup_steps",
    "max_grad_norm": "train.max_grad_norm",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "logging_steps": "train.log_every",
    "save_total_limit": "train.keep_last",
    "lora_r": "adapter.r",
    "lora_rank": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "lora_target_modules": "adapter.target_modules",
    "lora_target": "adapter.target_modules",
    "base_model": "model.name_or_path",
    "model_name_or_path": "model.name_or_path",
    "sequence_len": "model.max_length",
    "cutoff_len": "model.max_length",
    "max_seq_length": "model.max_length",
    "max_seq_len": "model.max_length",
    "val_set_size": "data.split.eval",
    "val_size": "data.split.eval",
    "report_to": "tracking",
    "output_dir": "run.output_dir",
    "seed": "run.seed",
    "run_name": "run.name",
    "max_samples": "data.limit",
    "dataloader_num_workers": "train.num_workers",
}

#: data.format values other tools use -> lmtune's format.
FORMAT_ALIASES: dict[str, str] = {
    "alpaca": "instruction",
    "sharegpt": "chat",
    "messages": "chat",
    "conversation": "chat",
    "conversations": "chat",
}

#: train.scheduler values of transformers' lr_scheduler_type -> lmtune's.
SCHEDULER_ALIASES: dict[str, str] = {"constant_with_warmup": "constant"}

SECTIONS = ("run", "model", "adapter", "data", "train", "tracking")


def _fraction(alias: str, value: Any) -> Any:
    """val_set_size / val_size: a fraction maps to data.split.eval; a row count cannot."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
        raise UserError(
            f"{alias}: {value} is a number of rows; lmtune's data.split.eval is a fraction "
            "of the training rows (e.g. data.split.eval=0.05), or give a data.eval file"
        )
    return value


def _targets(alias: str, value: Any) -> Any:
    """LoRA targets: LLaMA-Factory's `all` and comma-separated strings, peft's lists."""
    if isinstance(value, str):
        if value in ("all", "all-linear", "all_linear"):
            return "all-linear"
        if value == "auto":
            return value
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _report_to(alias: str, value: Any) -> dict[str, bool]:
    """report_to: tensorboard / mlflow (or a list of them) switch lmtune's trackers on."""
    names = [value] if isinstance(value, str) else list(value or [])
    out: dict[str, bool] = {}
    for name in names:
        name = str(name).lower()
        if name in ("none", "all"):
            continue
        if name not in ("tensorboard", "mlflow"):
            raise UserError(
                f"{alias}: {name} is not a tracker lmtune writes to; use tensorboard and/or "
                "mlflow (tracking.tensorboard=true, tracking.mlflow=true); metrics.jsonl is "
                "always written"
            )
        out[name] = True
    return out


_VALUE_FIXES = {
    "val_set_size": _fraction,
    "val_size": _fraction,
    "lora_target_modules": _targets,
    "lora_target": _targets,
    "report_to": _report_to,
}


def resolve(alias: str, value: Any) -> dict[str, Any]:
    """{canonical dotted key: value} for one aliased key (report_to may set two keys)."""
    canonical = KEY_ALIASES[alias]
    fix = _VALUE_FIXES.get(alias)
    value = fix(alias, value) if fix else value
    if isinstance(value, dict) and canonical == "tracking":
        return {f"tracking.{k}": v for k, v in value.items()}
    return {canonical: value}


def canonical_override_key(key: str) -> str | None:
    """The alias a `key=value` override spells (`learning_rate`, `train.learning_rate`), or None."""
    if key in KEY_ALIASES:
        return key
    section, _, leaf = key.partition(".")
    if leaf in KEY_ALIASES and KEY_ALIASES[leaf].startswith(section + "."):
        return leaf
    return None


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating sections on the way."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _found_aliases(data: dict[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """(where written, alias, value) for every alias in the top level and in the sections."""
    for key in list(data):
        if key in KEY_ALIASES and key not in SECTIONS:
            yield key, key, data.pop(key)
    for section in SECTIONS:
        node = data.get(section)
        if not isinstance(node, dict):
            continue
        for key in list(node):
            canonical = KEY_ALIASES.get(key)
            if (
                canonical
                and canonical.startswith(section + ".")
                and canonical != f"{section}.{key}"
            ):
                yield f"{section}.{key}", key, node.pop(key)


def normalize(data: dict[str, Any], source: str) -> list[str]:
    """Rewrite aliased keys and format names in a raw config dict, in place; return the notes.

    Two spellings of one key in the same file (learning_rate and train.lr) are an error:
    which one wins would be a guess.
    """
    notes: list[str] = []
    for written, alias, value in list(_found_aliases(data)):
        for canonical, v in resolve(alias, value).items():
            if _get(data, canonical) is not None:
                raise UserError(
                    f"{source}: {written} and {canonical} both set the same key; keep one "
                    f"({written} is the alias of {canonical})"
                )
            set_path(data, canonical, v)
            notes.append(f"{canonical} (given as {written})")
    notes += normalize_values(data)
    return notes


def normalize_values(data: dict[str, Any]) -> list[str]:
    """Adapter, format and scheduler names of other tools -> lmtune's; returns the notes."""
    notes = []
    if isinstance(data.get("adapter"), str):  # Axolotl's `adapter: lora`
        notes.append(f"adapter.type {data['adapter']} (given as adapter: {data['adapter']})")
        data["adapter"] = {"type": data["adapter"]}
    fmt = _get(data, "data.format")
    if isinstance(fmt, str) and fmt.lower() in FORMAT_ALIASES:
        data["data"]["format"] = FORMAT_ALIASES[fmt.lower()]
        notes.append(f"data.format {data['data']['format']} (given as {fmt})")
    sched = _get(data, "train.scheduler")
    if isinstance(sched, str) and SCHEDULER_ALIASES.get(sched):
        data["train"]["scheduler"] = SCHEDULER_ALIASES[sched]
        notes.append(f"train.scheduler {SCHEDULER_ALIASES[sched]} (given as {sched})")
    return notes


def suggest(path: str, known: list[str]) -> list[str]:
    """The known keys closest to an unknown dotted `path` (and the keys of aliases close to it).

    Compares whole paths and leaf names, so both `train.epochz` and `traning.lr` find theirs.
    """
    leaf = path.rsplit(".", 1)[-1]
    found = difflib.get_close_matches(path, known, n=3, cutoff=0.75)
    by_leaf: dict[str, list[str]] = {}
    for key in known:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    for alias, canonical in KEY_ALIASES.items():
        by_leaf.setdefault(alias, []).append(canonical)
    section = path.rsplit(".", 1)[0] if "." in path else ""
    for name in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75):
        # Keys of the same section first: train.epochz means train.epochs, not a data key.
        keys = sorted(by_leaf[name], key=lambda k: not k.startswith(section + "."))
        found += keys
    return list(dict.fromkeys(found))[:3]
