"""A run killed with SIGKILL mid-training resumes (--resume) to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runkit import sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "lmtune", "train", "configs/reviews_full.yaml", *args, "--quiet"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


# make test keeps its short twin, test_scale's kill -9 while checkpointing (LoRA, 6 steps); this
# full fine-tune of the shipped config (about 40 s) runs with pytest -m slow.
@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(120))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    common = [
        f"model.name_or_path={model_dir}",
        f"data.train={data}",
        "train.epochs=3",
        "train.batch_size=4",
        "train.save_every=3",
        "train.eval_every=6",
        "train.lr=1e-3",
        "train.early_stopping.patience=null",
        "train.keep_last=2",
    ]
    ref = subprocess.run(
        _cmd([*common, f"run.output_dir={tmp_path / 'ref'}"]),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd([*common, f"run.output_dir={run}"]),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    ckpts = run / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and len([p for p in ckpts.iterdir() if p.name.startswith("step-")]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()

    resumed = subprocess.run(
        _cmd([*common, f"run.output_dir={run}", "--resume"]),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "ref"), _weights(run)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
