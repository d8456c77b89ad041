"""Opt-in (pytest -m slow): zero-shot, 16-shot and fine-tuned builtin:minilm on SST-2 dev.

The data is ../shared/data/sst2 (train.tsv: `label<TAB>sentence`, CRLF; dev.tsv: 872
labelled sentences, `label<TAB>content`); lmtune reads both through the shipped config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.train.run import run_training
from runkit import needs_data

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, needs_data("sst2/dev.tsv")]

# The descriptions are the obvious ones, not tuned on dev (dev is what they are scored on).
DESCRIPTIONS = {"0": "a negative, sad review", "1": "a positive, happy review"}


@pytest.mark.timeout(3600)
def test_sst2_minilm_baselines_beside_fine_tune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8k training sentences, full fine-tune, 1 epoch; baselines of the untouched encoder."""
    monkeypatch.chdir(ROOT)  # the shipped config's ../shared/data paths are relative to the repo
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        "data.limit=8000",
        "adapter.type=full",
        "train.eval_every=0",
        "train.epochs=1",
        "baselines.enabled=true",
        "baselines.shots=16",
        "baselines.seeds=3",
        "baselines.label_descriptions=" + json.dumps(DESCRIPTIONS),
    ]
    cfg = load_config(ROOT / "configs" / "sst2_minilm.yaml", overrides)
    summary = run_training(cfg, quiet=True)
    report = json.loads((tmp_path / "run" / "baselines.json").read_text())
    zero, few, tuned = report["rows"]
    print(
        json.dumps(
            {
                "zero_shot": zero,
                "few_shot": few,
                "fine_tuned": tuned,
                "notes": report["notes"],
                "train_runtime_s": summary["train_runtime_s"],
            }
        )
    )
    assert [r["method"] for r in report["rows"]] == ["zero-shot", "few-shot", "fine-tuned"]
    assert report["data"] == "eval split" and report["eval_rows"] == 872
    assert report["base_model"] == "builtin:minilm" and report["base_kind"] == "encoder"
    assert tuned["accuracy"] == summary["best_eval"]["accuracy"]
    assert few["k"] == 16 and few["seeds"] == 3
    # Floors a little below what was measured: zero-shot 0.701, 16-shot 0.615 +- 0.016 (0.603,
    # 0.609, 0.634), fine-tuned 0.826. Nearest-centroid 16-shot trails zero-shot here: most
    # SST-2 training rows are short phrases, so 16 of them make noisy centroids.
    assert zero["accuracy"] >= 0.67, zero
    assert few["accuracy"] >= 0.58, few
    assert (
        tuned["accuracy"] >= 0.80
        and tuned["accuracy"] > max(zero["accuracy"], few["accuracy"]) + 0.05
    )
