"""The benchmarks run end to end (--quick) and print their ratio lines (lmtune/HF, lmtune/TRL)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(
    not (DATA / "sst2" / "train.tsv").is_file() or not (DATA / "instruct_alpaca_1k").is_dir(),
    reason=f"the shared data folder {DATA} (sst2, instruct_alpaca_1k) is absent",
)
def test_bench_quick_prints_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_train.py"),
            "--quick",
            "--data-dir",
            str(DATA),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ratios = [line for line in r.stdout.splitlines() if line.startswith("ratio lmtune/HF")]
    assert {line.split()[2] for line in ratios} == {"classification", "sft"}, r.stdout
    assert "samples/s" in ratios[0] and out.is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not (DATA / "hh_rlhf_harmless_base" / "test.jsonl").is_file(),
    reason=f"the shared data folder {DATA} (hh_rlhf_harmless_base) is absent",
)
def test_bench_align_quick_prints_ratio(tmp_path: Path) -> None:
    out = tmp_path / "align.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_align.py"),
            "--quick",
            "--data-dir",
            str(DATA),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ratios = [line for line in r.stdout.splitlines() if line.startswith("ratio lmtune/TRL")]
    assert {line.split()[2].rstrip(":") for line in ratios} == {"dpo", "reward"}, r.stdout
    assert "pairs/s" in ratios[0] and out.is_file()
