"""Every shipped config trains (2 optimizer steps); hub models are swapped for a tiny local one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.train.run import run_training
from runkit import tiny_causal_dir

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_trains(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # configs name their data relative to the repository root
    cfg = load_config(path)
    if str(cfg.data.train).startswith("../shared") and not (ROOT / cfg.data.train).exists():
        pytest.skip("../shared/data is absent (real datasets live beside the repo)")
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.eval_before=false",
        "data.limit=48",
        "train.batch_size=4",
        "train.eval_batch_size=8",
    ]
    if not cfg.model.name_or_path.startswith("builtin:"):
        overrides += [
            f"model.name_or_path={tiny_causal_dir(tmp_path, 'llama')}",
            "model.max_length=200",
        ]
    if cfg.task in ("dpo", "orpo"):
        # HH-RLHF dialogues outgrow the tiny model's 256 positions: keep the prompts' ends.
        overrides += ["preference.max_prompt_length=96"]
    cfg = load_config(path, overrides)
    summary = run_training(cfg, quiet=True)
    assert summary["train_steps"] == 2
    saved = json.loads((Path(summary["model_dir"]) / "lmtune_model.json").read_text())
    assert saved["task"] == cfg.task
