"""Saved models: find the model folder of a run, and load it with the config it was trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.tasks import spec


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder (uses its model/) or a model folder written by lmtune."""
    p = Path(path)
    if (p / "model" / "lmtune_model.json").is_file():
        return p / "model"
    if (p / "lmtune_model.json").is_file():
        return p
    if p.is_dir() and (p / "best" / "lmtune_model.json").is_file():
        return p / "best"  # a run that was interrupted after its first evaluation
    raise UserError(
        f"{p} is neither a run folder (with model/) nor a model folder written by lmtune "
        "(no lmtune_model.json); pass the output_dir of a finished `lmtune train` run"
    )


def load_for_inference(path: str | Path) -> tuple[torch.nn.Module, Any, dict[str, Any], Config]:
    """Model, tokenizer, its metadata, and a config that reads data the way training did."""
    from lmtune.models.export import load_trained

    model_dir = resolve_model_dir(path)
    model, tokenizer, meta = load_trained(model_dir)
    model.eval()
    # A released version keeps its resolved config beside the weights; a run folder above model/.
    run_cfg = (
        model_dir / "config.yaml"
        if (model_dir / "config.yaml").is_file()
        else model_dir.parent / "config.yaml"
    )
    data: dict[str, Any] = {}
    if run_cfg.is_file():
        data = yaml.safe_load(run_cfg.read_text()) or {}
        data.get("data", {}).pop("train", None)
    data.setdefault("data", {})
    data["task"] = meta["task"]
    data["data"]["format"] = meta.get("format", "auto")
    if meta.get("labels"):
        data["data"]["labels"] = meta["labels"]
    data.setdefault("model", {})["max_length"] = meta.get("max_length", 256)
    # The task's own section as training resolved it (qa: decoding, allow_no_answer included).
    section = spec(meta["task"]).section
    if section and meta.get(section):
        data[section] = dict(meta[section])
    return model, tokenizer, meta, Config.model_validate(data)
