"""The README's quality table, by the README's own commands (pytest -m slow; about 1 hour).

- SST-2: `lmtune train configs/sst2_minilm.yaml` (full fine-tune of builtin:minilm) within
  20 minutes of training, with the zero-shot and 16-shot baselines beside, and
  `configs/sst2_minilm_lora.yaml` (LoRA, mean pooling). The 91.0 target is NOT met: measured
  90.4 (README "Quality on real data"), so the floor below is a little under what the
  command reaches and a regression fails here. LoRA within 1.0 point of it is met (90.4) and
  asserted. The 20-minute budget is the issue's "on 2 CPU cores": run this with both cores
  free (on one core the run takes about 25 minutes).
- MRPC: `lmtune train configs/mrpc_minilm.yaml` reaches dev F1 (paraphrase class) >= 87
  (measured 88.5).

As in GLUE dev-set reporting, the best evaluation is the one kept, so the dev set also picks
the checkpoint; the last evaluation is printed beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runkit import cli_exit, needs_data

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, needs_data("sst2/train.tsv", "mrpc/train.tsv")]

TRAIN_BUDGET_S = 20 * 60


def train(config: str, out: Path) -> dict:
    """`lmtune train configs/CONFIG` into OUT; its summary.json, with the last eval added."""
    assert cli_exit("train", f"configs/{config}", f"run.output_dir={out}", "--quiet") == 0
    summary = json.loads((out / "summary.json").read_text())
    evals = [
        e
        for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if e.get("event") == "eval"
    ]
    summary["last_eval"] = evals[-1]
    baselines = out / "baselines.json"
    summary["baseline_rows"] = (
        json.loads(baselines.read_text())["rows"] if baselines.is_file() else []
    )
    print(
        json.dumps(
            {
                "config": config,
                "best": summary["best_metric_value"],
                "best_step": summary["best_step"],
                "last": {k: evals[-1].get(k) for k in ("step", "accuracy", "f1")},
                "train_runtime_s": summary["train_runtime_s"],
                "baselines": summary["baseline_rows"],
            },
            default=str,
        )
    )
    return summary


@pytest.mark.timeout(3 * 3600)
def test_sst2_full_and_lora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the configs' ../shared/data paths are relative to the repo
    full = train("sst2_minilm.yaml", tmp_path / "full")
    assert full["best_eval"]["accuracy"] >= 0.900, full["best_eval"]  # measured 0.904
    assert full["train_runtime_s"] <= TRAIN_BUDGET_S
    assert full["eval_before"]["eval"]["accuracy"] < 0.7  # a random head: the gain is training's
    zero, few, tuned = full["baseline_rows"]
    assert (zero["method"], few["method"], few["k"]) == ("zero-shot", "few-shot", 16)
    assert tuned["accuracy"] > max(zero["accuracy"], few["accuracy"])
    lora = train("sst2_minilm_lora.yaml", tmp_path / "lora")
    # The target: LoRA within 1.0 point of the full fine-tune (measured 0.904 vs 0.904).
    assert lora["best_eval"]["accuracy"] >= full["best_eval"]["accuracy"] - 0.010, lora["best_eval"]


@pytest.mark.timeout(3600)
def test_mrpc_f1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    run = train("mrpc_minilm.yaml", tmp_path / "mrpc")
    assert run["best_metric"] == "f1"
    assert run["best_eval"]["f1"] >= 0.870, run["best_eval"]
