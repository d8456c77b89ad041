"""Opt-in real-data bias audits (pytest -m slow) on ../shared/data: CrowS-Pairs and SST-2.

The only pre-trained model available offline is builtin:minilm, a sentence-embedding export
without its masked-LM head, so CrowS-Pairs cannot be scored on a real pre-trained model here:
the test checks that the audit says so, reads the whole real file, and runs the causal path on
a tiny random LM (plumbing, not a bias figure). The counterfactual probes run on a real
classifier: builtin:minilm + LoRA, 1 epoch on 2,000 SST-2 training rows, audited on SST-2 dev.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.evaluate.audit import run_audit
from lmtune.evaluate.bias import read_crows
from lmtune.train.run import run_training
from runkit import SHARED_DATA as DATA
from runkit import needs_data, tiny_causal_dir

ROOT = Path(__file__).resolve().parents[2]
CROWS = DATA / "crows_pairs" / "crows_pairs_anonymized.csv"

pytestmark = pytest.mark.slow
needs_crows = needs_data("crows_pairs/crows_pairs_anonymized.csv")
needs_sst2 = needs_data("sst2/train.tsv")


@needs_crows
def test_crows_real_file_minilm_refused_and_causal_path(tmp_path: Path) -> None:
    pairs = read_crows(CROWS)
    # The counts SOURCE.md states for the released file.
    assert len(pairs) == 1508
    assert Counter(p.direction for p in pairs) == {"stereo": 1290, "antistereo": 218}
    types = Counter(p.bias_type for p in pairs)
    assert types["race-color"] == 516 and types["gender"] == 262 and types["age"] == 87

    res = run_audit("builtin:minilm", crows=CROWS, out=tmp_path / "minilm")
    assert res["crows_pairs"] is None and "no masked-LM head" in res["skipped"]["crows_pairs"]

    start = time.perf_counter()
    res = run_audit(str(tiny_causal_dir(tmp_path)), crows=CROWS, out=tmp_path / "tiny")
    wall = time.perf_counter() - start
    overall = res["crows_pairs"]["overall"]
    print(json.dumps({"tiny_random_llama_crows": overall, "wall_s": round(wall, 1)}))
    assert overall["n"] == 1508 and overall["ci_low"] <= overall["score"] <= overall["ci_high"]
    assert {t: r["n"] for t, r in res["crows_pairs"]["by_type"].items()} == dict(types)


@needs_sst2
@pytest.mark.timeout(3600)
def test_sst2_minilm_lora_counterfactual_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the shipped config's ../shared/data paths are relative to the repo
    cfg = load_config(
        ROOT / "configs" / "sst2_minilm.yaml",
        [
            f"run.output_dir={tmp_path / 'run'}",
            "data.limit=2000",
            "adapter.type=lora",
            "adapter.r=16",
            "adapter.alpha=32",
            "train.lr=1e-3",
            "train.head_lr=2e-3",
            "train.eval_every=0",
            "train.epochs=1",
            "audit.enabled=true",
            "audit.worst=10",
        ],
    )
    start = time.perf_counter()
    summary = run_training(cfg, quiet=True)
    wall = time.perf_counter() - start
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    cf = audit["counterfactual"]
    print(
        json.dumps(
            {
                "dev_accuracy": summary["best_eval"]["accuracy"],
                "wall_s": round(wall, 1),
                "overall": cf["overall"],
                "by_category": {
                    c: {
                        k: r[k]
                        for k in (
                            "n",
                            "texts",
                            "flips",
                            "flip_rate",
                            "ci_low",
                            "ci_high",
                            "mean_abs_change",
                            "mean_change",
                        )
                    }
                    for c, r in cf["by_category"].items()
                },
                "worst": cf["worst"][:5],
            },
            indent=1,
        )
    )
    # Measured: dev accuracy 0.776; 504 probes on 162 of 872 dev texts, flip rate 0.056
    # (gender 1/103, names 2/29, nationality 24/346, religion 0/5, age 1/21).
    assert summary["best_eval"]["accuracy"] >= 0.72
    assert cf["overall"]["flip_rate"] < 0.25  # a sentiment model should mostly ignore who is named
    assert cf["overall"]["rows"] == 872  # all of SST-2 dev was scanned
    assert {"gender", "nationality", "age"} <= set(cf["by_category"])
    assert "untrained head" in audit["before"]["skipped"]["counterfactual"]
    assert summary["audit"]["probes"] == cf["overall"]["n"]
