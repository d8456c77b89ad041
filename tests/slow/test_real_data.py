"""Opt-in real-data runs (pytest -m slow): builtin:minilm on SST-2 from ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.train.run import run_training
from runkit import needs_data

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, needs_data("sst2/train.tsv")]


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_sst2_minilm_subset(tmp_path: Path, adapter: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """8k SST-2 training sentences, 1 epoch: dev accuracy far above the 50% chance level."""
    monkeypatch.chdir(ROOT)  # the shipped config's ../shared/data paths are relative to the repo
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        "data.limit=8000",
        f"adapter.type={adapter}",
        "train.eval_every=0",
        "train.epochs=1",
    ]
    if adapter == "lora":
        overrides += ["train.lr=1e-3", "train.head_lr=2e-3", "adapter.r=16", "adapter.alpha=32"]
    cfg = load_config(ROOT / "configs" / "sst2_minilm.yaml", overrides)
    summary = run_training(cfg, quiet=True)
    best = summary["best_eval"]
    print(
        json.dumps(
            {
                "adapter": adapter,
                "dev_accuracy": best["accuracy"],
                "train_runtime_s": summary["train_runtime_s"],
            }
        )
    )
    # 1 epoch on 12% of SST-2: measured 0.826 (full) here; the full-data run reaches 0.898.
    assert best["accuracy"] >= 0.80, best
    assert summary["eval_before"]["eval"]["accuracy"] < 0.7
