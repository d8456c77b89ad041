"""examples/walkthrough.sh end to end on the bundled data: one scenario from data to a released,
served and monitored model.

The script runs for real (bash, the lmtune console command, builtin:minilm, a uvicorn server on
a free port); only the training is shortened (2 epochs at a higher learning rate, through
WALKTHROUGH_OVERRIDES) to keep this tier quick. Every output goes to tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "walkthrough.sh"
QUICK = "train.epochs=2 train.lr=2e-3 train.head_lr=4e-3 train.eval_before=false"
LABELS = {"negative", "neutral", "positive"}


def walkthrough(out: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WALKTHROUGH_OVERRIDES": QUICK,
        "LMTUNE": f"{sys.executable} -m lmtune",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "COLUMNS": "250",
    }  # rich folds long lines (paths under tmp_path) at 80 columns otherwise
    env.pop("WALKTHROUGH_OUT", None)
    env.pop("WALKTHROUGH_REAL", None)
    # Its own process group: on a timeout the script and the server it started stop together.
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *args, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"walkthrough.sh did not finish in {timeout} s:\n{(stdout + stderr)[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def jsonl(path: Path) -> list[dict]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


@pytest.mark.timeout(900)
# About 90 s on two cores: with the slow tests. make test covers its steps one by one (the CLI,
# pipeline, registry, serve and monitor tests) and `make demo` the first of them.
@pytest.mark.slow
def test_walkthrough_bundled(tmp_path: Path) -> None:
    out = tmp_path / "walkthrough"
    proc = walkthrough(out)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "Traceback" not in log

    # 1-2. Released as v1 into OUT/registry, past the demo config's gate (test accuracy >= 0.85).
    registry, run = out / "registry", out / "run"
    assert (registry / "current").read_text() == "v1\n"
    metrics = json.loads((registry / "v1" / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["value"] >= 0.85
    assert [(e["event"], e["version"]) for e in jsonl(registry / "releases.jsonl")] == [
        ("release", "v1")
    ]
    assert (
        f"released v1: {registry / 'v1'}" in proc.stdout
        and f"{metrics['value']:.4f}" in proc.stdout
    )

    # 3. The server answered: health, one text, three held-out texts, metrics; then stopped on SIGTERM.
    served = jsonl(out / "predictions.jsonl")
    test_rows = jsonl(run / "data" / "test.jsonl")
    assert [p["input"] for p in served[1:]] == [r["text"] for r in test_rows[:3]]
    assert len(served) == 4 and {p["endpoint"] for p in served} == {"/v1/classify"}
    assert {p["model_version"] for p in served} == {"v1"} and {p["label"] for p in served} <= LABELS
    assert served[0]["label"] == "positive"  # "The battery lasts all week ... Love them."
    assert '"predictions_total": 4' in proc.stdout and '"status": "ok"' in proc.stdout
    assert "stopped (SIGTERM)" in (out / "serve.log").read_text()
    assert "4 predictions logged" in proc.stdout

    # 4-5. The history holds the released version's records: two healthy batches, then the shift.
    with sqlite3.connect(registry / "monitor.db") as conn:
        records = conn.execute(
            "SELECT model_version, batch, n, release FROM records ORDER BY id"
        ).fetchall()
    assert [(v, b, n) for v, b, n, _ in records] == [
        ("v1", "week1", 186),
        ("v1", "week2", 186),
        ("v1", "app_reviews_shifted", 30),
    ]
    assert json.loads(records[0][3])["metrics"]["accuracy"] == metrics["value"]
    healthy = (out / "status_healthy.txt").read_text()
    assert "all checks OK" in healthy and "ALERT" not in healthy
    assert "monitor status exit code: 0 (healthy, as expected)" in proc.stdout
    shifted = " ".join((out / "status_shifted.txt").read_text().split())
    alerts = shifted[shifted.index("ALERT:") :]
    for check in (
        "length_psi",
        "length_ks",
        "oov_increase",
    ):  # the inputs changed, not only the labels
        assert check in alerts, alerts
    assert "days_since_release" not in alerts
    assert "monitor status exit code: 1 (alert, as expected)" in proc.stdout

    # 6. The report: metric, PSI and OOV plots over the three batches.
    html = (out / "monitor_report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "app_reviews_shifted" in html
    summary = json.loads((out / "monitor_report" / "monitor.json").read_text())
    assert [r["batch"] for r in summary["records"]] == ["week1", "week2", "app_reviews_shifted"]

    # A second run into the same folder is refused before anything runs.
    again = walkthrough(out, timeout=60)
    assert again.returncode == 2 and "is not empty" in again.stderr
