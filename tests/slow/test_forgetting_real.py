"""Opt-in real-data forgetting experiment (pytest -m slow): SST-2, then MRPC, on builtin:minilm.

Run A fine-tunes MiniLM on 4k SST-2 sentences (configs/forgetting_sst2.yaml). Run B continues
from A's model on MRPC (configs/forgetting_sst2_mrpc.yaml) four ways: no mitigation, L2-SP,
EWC and LoRA. Forgetting = SST-2 dev accuracy through A's head on B's encoder, before and
after B (forgetting.json); B's own quality = MRPC dev accuracy and F1 of the paraphrase class.
The table is printed (pytest -s) and written to the test's tmp folder as forgetting_table.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.evaluate.run import run_eval
from lmtune.train.run import run_training
from runkit import SHARED_DATA as DATA
from runkit import needs_data

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    needs_data("sst2/train.tsv", "mrpc/train.tsv"),
]

# Run B variants: overrides of configs/forgetting_sst2_mrpc.yaml (which ships with l2sp 0.1).
VARIANTS = {
    "none": ["forgetting.mitigation.l2sp=0"],
    "l2sp": [],  # l2sp 0.1
    "ewc": ["forgetting.mitigation.l2sp=0", "forgetting.mitigation.ewc.weight=1"],
    "lora": [
        "forgetting.mitigation.l2sp=0",
        "adapter.type=lora",
        "adapter.r=16",
        "adapter.alpha=32",
        "train.lr=1e-3",
    ],
}


@pytest.mark.timeout(3600)
def test_sst2_then_mrpc_mitigation_reduces_forgetting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the configs' ../shared/data paths are relative to the repo
    t0, c0 = time.perf_counter(), time.process_time()
    a_cfg = load_config(
        ROOT / "configs" / "forgetting_sst2.yaml", [f"run.output_dir={tmp_path / 'a'}"]
    )
    a = run_training(a_cfg, quiet=True)
    table = [
        {
            "run": "A: SST-2",
            "sst2_dev_acc": a["best_eval"]["accuracy"],
            "wall_s": round(time.perf_counter() - t0),
            "cpu_s": round(time.process_time() - c0),
        }
    ]
    for name, overrides in VARIANTS.items():
        t, c = time.perf_counter(), time.process_time()
        cfg = load_config(
            ROOT / "configs" / "forgetting_sst2_mrpc.yaml",
            [
                f"run.output_dir={tmp_path / name}",
                f"model.name_or_path={tmp_path / 'a' / 'model'}",
                "train.eval_before=false",
                *overrides,
            ],
        )
        b = run_training(cfg, quiet=True)
        mrpc = run_eval(tmp_path / name, DATA / "mrpc" / "dev.tsv", tmp_path / name / "mrpc_dev")
        f = b["forgetting"]
        table.append(
            {
                "run": f"B: MRPC {name}",
                "sst2_before": f["before"],
                "sst2_after": f["after"],
                "sst2_drop": -f["abs_change"],
                "mrpc_dev_acc": mrpc["accuracy"],
                "mrpc_dev_f1": mrpc["details"]["per_class"]["1"]["f1"],
                "wall_s": round(time.perf_counter() - t),
                "cpu_s": round(time.process_time() - c),
            }
        )
    (tmp_path / "forgetting_table.json").write_text(json.dumps(table, indent=2))
    print(json.dumps(table, indent=1))
    rows = {r["run"].split()[-1]: r for r in table[1:]}

    assert table[0]["sst2_dev_acc"] >= 0.8
    for r in rows.values():
        assert r["sst2_before"] == pytest.approx(
            table[0]["sst2_dev_acc"]
        )  # A's head on A's encoder
        assert r["mrpc_dev_acc"] >= 0.70  # B learns MRPC (the dev majority class is 68%)
    assert rows["none"]["sst2_drop"] >= 0.05  # unmitigated MRPC training forgets SST-2 ...
    # ... and L2-SP and EWC each forget less, measured on the same 872 dev sentences.
    assert rows["l2sp"]["sst2_drop"] <= rows["none"]["sst2_drop"] - 0.03
    assert rows["ewc"]["sst2_drop"] <= rows["none"]["sst2_drop"] - 0.03
