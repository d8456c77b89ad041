"""benchmarks/bench_scale.py end to end at a tiny size: a measured line beside the plan, and a
combination this lmtune cannot run yet either measured or skipped with its reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# A benchmark's smoke run (about 30 s on two cores): with the slow tests, like the other
# benchmarks' (the device check's CPU smoke stays in make test).
@pytest.mark.slow
@pytest.mark.multiproc
def test_bench_scale_tiny(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_scale.py"),
            "--sizes",
            "tiny",
            "--steps",
            "2",
            "--batch",
            "2",
            "--length",
            "64",
            "--layouts",
            "1:none,2:fsdp",
            "--checkpointing",
            "off",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())
    one = rows[0]
    assert one["nproc"] == 1 and "skipped" not in one, one
    assert one["tokens_per_s"] > 0 and one["peak_rss_gib"][0] > 0
    # Weights + gradients + AdamW states of a full fine-tune, from the tensors: the plan's exactly.
    assert one["state_gib"][0] == one["plan_state_gib"]
    assert "tokens/s" in r.stdout and "plan" in r.stdout
    fsdp = rows[1]
    assert ("skipped" in fsdp and fsdp["skipped"]) or fsdp["state_gib"][0] < one["state_gib"][0]
