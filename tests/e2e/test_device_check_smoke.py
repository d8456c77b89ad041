"""benchmarks/device_check.sh --cpu-smoke: the GPU check's script runs end to end on tiny
shapes (lmtune LoRA, QLoRA, full and TRL's SFTTrainer), so it cannot rot between GPU runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_device_check_cpu_smoke(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="the QLoRA case needs bitsandbytes")
    pytest.importorskip("trl", reason="the ratio case needs trl")
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "device_check.sh"),
            "--cpu-smoke",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=280,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("tiny ")]
    assert [row[1] for row in rows] == ["lora", "trl-lora", "qlora", "full"], r.stdout
    for row in rows:
        assert float(row[2]) > 0 and float(row[4]) > 0, row  # tokens/s and peak memory measured
    assert "ratio lmtune/TRL tiny LoRA" in r.stdout
    # The QLoRA case really trained on a 4-bit base: its run wrote the adapter's steps.
    assert (tmp_path / "tiny-qlora" / "metrics.jsonl").is_file()
