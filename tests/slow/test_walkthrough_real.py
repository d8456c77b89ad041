"""examples/walkthrough.sh --real (pytest -m slow): the documented scenario on real data, as one run.

builtin:minilm + LoRA on 2,000 SST sentences is released by `lmtune pipeline
configs/pipeline_sst2_minilm.yaml` (gate: accuracy >= 0.80 on 600 SST-2 test sentences), served
from REGISTRY/current, then monitored: three batches of 407 unseen SST-2 test sentences (status
exit 0), then 400 Amazon All_Beauty reviews (status exit 1 with input-drift alerts). The data
preparation is examples/walkthrough_data.py, shared with tests/slow/test_monitor_real.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runkit import needs_data

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from walkthrough_data import REAL_FILES  # noqa: E402

pytestmark = [pytest.mark.slow, needs_data(*REAL_FILES)]


@pytest.mark.timeout(1800)
def test_walkthrough_real(tmp_path: Path) -> None:
    start = time.time()
    out = tmp_path / "walkthrough_real"
    env = {
        **os.environ,
        "LMTUNE": f"{sys.executable} -m lmtune",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "COLUMNS": "250",
    }
    for key in ("WALKTHROUGH_OUT", "WALKTHROUGH_REAL", "WALKTHROUGH_OVERRIDES"):
        env.pop(key, None)
    # Its own process group: on a timeout the script and the server it started stop together.
    proc = subprocess.Popen(
        ["bash", str(ROOT / "examples" / "walkthrough.sh"), "--real", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=1700)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, (stdout + stderr)[-6000:]

    registry = out / "registry"
    assert (registry / "current").read_text() == "v1\n"
    release = json.loads((registry / "v1" / "metrics.json").read_text())
    assert release["value"] >= 0.80 and release["test_data"]["rows"] == 600
    served = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(served) == 4 and {p["model_version"] for p in served} == {"v1"}
    assert {p["label"] for p in served} <= {"0", "1"} and served[0]["label"] == "1"

    with sqlite3.connect(registry / "monitor.db") as conn:
        batches = [b for (b,) in conn.execute("SELECT batch FROM records ORDER BY id")]
    assert batches == ["sst2_week1", "sst2_week2", "sst2_week3", "amazon_beauty"]
    assert "all checks OK" in (out / "status_healthy.txt").read_text()
    shifted = " ".join((out / "status_shifted.txt").read_text().split())
    alerts = shifted[shifted.index("ALERT:") :]
    # Input drift, not only the label skew (Amazon reviews are ~95% positive).
    for check in ("length_psi", "length_ks", "oov_increase", "label_psi"):
        assert check in alerts, alerts

    summary = json.loads((out / "monitor_report" / "monitor.json").read_text())
    figures = [
        {
            "batch": r["batch"],
            "n": r["n"],
            "accuracy": round(r["metrics"]["accuracy"], 4),
            **{
                k: round(r["drift"][k], 4)
                for k in ("length_psi", "oov_rate", "label_psi", "prediction_psi")
            },
            "ks_p": float(f"{r['drift']['length_ks']['pvalue']:.3g}"),
        }
        for r in summary["records"]
    ]
    print(
        json.dumps(
            {
                "release_accuracy": round(release["value"], 4),
                "alerts": summary["alerts"],
                "records": figures,
                "total_s": round(time.time() - start, 1),
            },
            indent=1,
        )
    )
