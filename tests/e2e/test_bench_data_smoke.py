"""benchmarks/bench_data.py runs end to end on a few rows and its second run is a cache hit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_data_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--rows", "300"]
        + ["--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["rows"] == 300 and got["cache_hit_line"] is True
    for side in ("plain", "first", "second"):
        r_ = got[side]
        assert r_["seconds"] > 0 and r_["peak_rss_gb"] >= r_["peak_process_rss_gb"] > 0
        assert 0 < r_["peak_pss_gb"] <= r_["peak_rss_gb"]
    assert "ratio first/plain" in r.stdout
