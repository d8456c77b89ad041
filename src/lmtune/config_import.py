"""`lmtune config import FILE`: an Axolotl, LLaMA-Factory or TRL-arguments YAML as an lmtune config.

Keys that mean the same thing everywhere (learning_rate, lora_r, ...) go through the alias
table (config_aliases.py); each tool's own keys (Axolotl's datasets/adapter/rl, LLaMA-Factory's
stage/finetuning_type/dataset, TRL's use_peft/dataset_name) are read here. Whatever has no
lmtune counterpart is listed with the reason, never dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmtune.config_aliases import KEY_ALIASES, resolve, set_path
from lmtune.errors import UserError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet", ".gz")
#: Axolotl dataset `type` / LLaMA-Factory `formatting` -> lmtune data.format.
DATASET_TYPES = {
    "alpaca": "instruction",
    "sharegpt": "chat",
    "chat_template": "chat",
    "messages": "chat",
    "completion": "text",
}
#: Which task each tool's training mode is.
AXOLOTL_RL = {"dpo": "dpo", "ipo": "dpo", "orpo": "orpo"}
LLAMAFACTORY_STAGE = {"sft": "sft", "dpo": "dpo", "rm": "reward"}
#: Keys that only steer the other tool's own run and need nothing in lmtune.
NO_OP = {
    "do_train": "lmtune train always trains",
    "do_eval": "lmtune evaluates on the eval split",
    "overwrite_output_dir": "use `lmtune train --overwrite`",
    "plot_loss": "report.html always plots the loss",
    "strict": "",
    "eval_strategy": "",
    "evaluation_strategy": "",
    "save_strategy": "",
    "logging_strategy": "",
    "type": "",
}


def detect_tool(raw: dict[str, Any]) -> str:
    """axolotl, llama-factory or trl, from the keys only that tool uses."""
    if {"base_model", "datasets", "micro_batch_size", "sequence_len", "rl"} & raw.keys():
        return "axolotl"
    if {"stage", "finetuning_type", "cutoff_len", "lora_target", "dataset"} & raw.keys():
        return "llama-factory"
    return "trl"


class Converter:
    """Collects the lmtune config and what could not be mapped, key by key."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.out: dict[str, Any] = {}
        self.unmapped: list[str] = []

    def put(self, key: str, value: Any) -> None:
        set_path(self.out, key, value)

    def skip(self, key: str, value: Any, why: str) -> None:
        self.unmapped.append(f"{key}: {value!r} ({why})")

    def data_path(self, key: str, path: Any, fmt: Any = None) -> None:
        """A local data file becomes data.train; a hub dataset name is listed with the fix."""
        text = str(path)
        if Path(text).exists() or text.endswith(DATA_SUFFIXES):
            self.put("data.train", text)
        else:
            self.skip(
                key,
                path,
                "a hub dataset or a name in the tool's dataset registry: save it with "
                "datasets' save_to_disk or as jsonl and set data.train to that path",
            )
        if fmt is not None:
            if str(fmt) in DATASET_TYPES:
                self.put("data.format", DATASET_TYPES[str(fmt)])
            else:
                self.skip(f"{key} type", fmt, "no lmtune format of that name; data.format auto")


def _axolotl(c: Converter, key: str, value: Any) -> bool:
    if key == "datasets":
        sets = value if isinstance(value, list) else [value]
        for i, ds in enumerate(sets):
            ds = ds if isinstance(ds, dict) else {"path": ds}
            if i == 0:
                c.data_path("datasets[0].path", ds.get("path"), ds.get("type"))
            else:
                c.skip(f"datasets[{i}]", ds.get("path"), "lmtune reads one data.train source here")
        return True
    if key == "adapter":
        if value in ("lora", "qlora"):
            c.put("adapter.type", "lora")
        if value == "qlora":
            c.skip(key, value, "4-bit base weights: not mapped; trained as LoRA on the full base")
        return True
    if key == "rl":
        if value in AXOLOTL_RL:
            c.put("task", AXOLOTL_RL[value])
            if value == "ipo":
                c.put("preference.loss", "ipo")
        else:
            c.skip(key, value, "lmtune's preference tasks are dpo, orpo and reward")
        return True
    if key == "lora_target_linear":
        if value:
            c.put("adapter.target_modules", "all-linear")
        return True
    if key in ("sample_packing", "packing"):
        c.put("data.packing", bool(value))
        return True
    if key == "rl_beta":
        c.put("preference.beta", value)
        return True
    return False


def _llamafactory(c: Converter, key: str, value: Any) -> bool:
    if key == "stage":
        if value in LLAMAFACTORY_STAGE:
            c.put("task", LLAMAFACTORY_STAGE[value])
        else:
            c.skip(key, value, "lmtune has sft, dpo, orpo, reward and rlhf (reward-model PPO-like)")
        return True
    if key == "finetuning_type":
        if value in ("lora", "full"):
            c.put("adapter.type", value)
        else:
            c.skip(key, value, "lmtune trains full, lora, dora or the head only")
        return True
    if key == "dataset":
        c.data_path(key, value)
        return True
    if key == "pref_beta":
        c.put("preference.beta", value)
        return True
    if key == "pref_loss":
        if value == "orpo":
            c.put("task", "orpo")
        elif value in ("sigmoid", "ipo", "hinge", "simpo"):
            c.put("preference.loss", value)
        else:
            c.skip(key, value, "no lmtune preference loss of that name")
        return True
    if key == "template":
        c.skip(key, value, "lmtune uses the tokenizer's chat template (data.template auto)")
        return True
    return False


def _trl(c: Converter, key: str, value: Any) -> bool:
    if key == "use_peft":
        c.put("adapter.type", "lora" if value else "full")
        return True
    if key == "dataset_name":
        c.data_path(key, value)
        return True
    if key in ("max_length", "max_seq_length"):
        c.put("model.max_length", value)
        return True
    if key == "beta":
        c.put("preference.beta", value)
        return True
    if key == "packing":
        c.put("data.packing", bool(value))
        return True
    return False


def _common(c: Converter, key: str, value: Any) -> bool:
    """Keys every tool spells alike: precision, remote code, and the alias table."""
    if key in ("bf16", "fp16", "tf32"):
        if key == "bf16" and value:
            c.put("train.precision", "auto" if value == "auto" else "bf16")
        elif value:
            c.skip(key, value, "lmtune trains in fp32 or bf16 autocast (train.precision)")
        return True
    if key == "trust_remote_code":
        c.put("model.trust_remote_code", bool(value))
        return True
    if key in KEY_ALIASES:
        try:
            for canonical, v in resolve(key, value).items():
                c.put(canonical, v)
        except UserError as exc:
            c.skip(key, value, str(exc).split(": ", 1)[-1])
        return True
    if key in NO_OP:
        return True
    return False


TOOLS = {"axolotl": _axolotl, "llama-factory": _llamafactory, "trl": _trl}


def import_config(path: str | Path) -> tuple[dict[str, Any], str, list[str]]:
    """(lmtune config dict, the tool it came from, what could not be mapped) for a YAML file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist (give an Axolotl, LLaMA-Factory or TRL YAML file)")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: the top level must be a mapping of settings")
    tool = detect_tool(raw)
    c = Converter(tool)
    c.put("run.name", p.stem)
    for key, value in raw.items():
        if TOOLS[tool](c, key, value) or _common(c, key, value):
            continue
        if value not in (None, False):  # a feature switched off is what lmtune does anyway
            c.skip(key, value, "no lmtune counterpart")
    if tool == "trl" and "use_peft" not in raw:
        c.put("adapter.type", "full")  # TRL fine-tunes every weight unless use_peft is set
    if "task" not in c.out:
        # Axolotl and LLaMA-Factory train SFT unless rl / stage say otherwise; TRL's trainer is
        # the command's name, not in the file: a DPO beta says DPO, anything else is SFT.
        c.put("task", "dpo" if tool == "trl" and "beta" in raw else "sft")
    return c.out, tool, c.unmapped


def render(path: str | Path) -> tuple[str, list[str]]:
    """(the lmtune YAML, lines naming what was not mapped); the YAML is validated first."""
    from pydantic import ValidationError

    from lmtune.config import Config, _format_errors

    out, tool, unmapped = import_config(path)
    try:
        Config.model_validate(out)
    except ValidationError as err:
        raise UserError(
            _format_errors(err, f"{path} (converted from {tool})")
            + "\nfix these in the source file, or convert and edit the result"
        ) from None
    header = f"# lmtune config converted from the {tool} config {Path(path).name}\n"
    if unmapped:
        header += "# not mapped (see `lmtune config import` output):\n"
        header += "".join(f"#   {u}\n" for u in unmapped)
    return header + yaml.safe_dump(out, sort_keys=False), unmapped
