"""Sharded checkpoints across process counts, kill -9 at any moment, and two "machines".

Every run here is compared with one uninterrupted run in this process: the weights it
writes to model/ must agree to float rounding.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lmtune.config import dump_config
from lmtune.train.run import run_training
from runkit import config, folder_tensors, sentiment_rows, tiny_bert_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmtune", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def lmtune(*args: str) -> subprocess.CompletedProcess:
    """`python -m lmtune ARGS` (this tree's sources first)."""
    return subprocess.run(
        _cmd(*args), capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=400
    )


def _sections(tmp: Path, adapter: str = "lora", **train: Any) -> dict[str, Any]:
    """A tiny classification run with a constant LR (so max_steps may grow on resume)."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0} if adapter != "full" else {}
    return {
        "task": "classification",
        "model": {"name_or_path": str(tiny_bert_dir(tmp)), "max_length": 64},
        "adapter": {"type": adapter, **lora},
        "data": {"train": str(write_jsonl(tmp / "d.jsonl", sentiment_rows(48)))},
        "train": {
            "max_steps": 4,
            "lr": 1e-2,
            "scheduler": "constant",
            "save_every": 2,
            "eval_each_epoch": False,
            "eval_before": False,
            **train,
        },
    }


def _yaml(tmp: Path, name: str, sections: dict[str, Any]) -> tuple[Path, Path]:
    """(config file, run folder) of the sections, run into tmp/name."""
    cfg = config(tmp / name, **sections)
    path = tmp / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    return path, Path(cfg.run.output_dir)


def _assert_same_weights(one: Path, two: Path, atol: float = 1e-5) -> None:
    a, b = folder_tensors(one / "model"), folder_tensors(two / "model")
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


def _reference(tmp: Path, sections: dict[str, Any]) -> Path:
    cfg = config(tmp / "ref", **sections)
    run_training(cfg, quiet=True)
    return Path(cfg.run.output_dir)


# make test keeps the other direction (1 process -> 2 under FSDP, a resharded checkpoint); this
# one (about 35 s) runs with pytest -m slow.
@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_checkpoint_of_two_ddp_processes_resumes_on_one(tmp_path: Path) -> None:
    sections = _sections(tmp_path)
    ref = _reference(tmp_path, sections)
    path, run = _yaml(tmp_path, "part", sections)
    first = lmtune("train", str(path), "train.max_steps=2", "train.batch_size=4", "--nproc", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / "checkpoints" / "step-0000002" / ".metadata").is_file()
    # The same run folder, continued by one process (batch 8: the same global batch).
    cfg = config(tmp_path / "part", **sections)
    # --force: max_steps is a safe change (the first part stopped at 2).
    resumed = run_training(cfg, resume=True, quiet=True, force=True)
    assert resumed["train_steps"] == 4 and resumed["world_size"] == 1
    _assert_same_weights(ref, run)


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_checkpoint_of_one_process_resumes_on_two_fsdp(tmp_path: Path) -> None:
    sections = _sections(tmp_path, adapter="full")
    ref = _reference(tmp_path, sections)
    part = config(tmp_path / "part", **{**sections, "train": {**sections["train"], "max_steps": 2}})
    run_training(part, quiet=True)
    path, run = _yaml(tmp_path, "part", sections)
    second = lmtune(
        "train",
        str(path),
        "train.batch_size=4",
        "train.distributed.strategy=fsdp",
        "--resume",
        "--force",  # max_steps: the first part stopped at 2
        "--nproc",
        "2",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    _assert_same_weights(ref, run, atol=1e-4)


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_kill_9_at_any_moment_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    """A run killed while it trains and checkpoints (every step) resumes to the same weights."""
    sections = _sections(tmp_path, max_steps=6)
    sections["train"]["save_every"] = 1
    ref = _reference(tmp_path, sections)
    path, run = _yaml(tmp_path, "part", sections)
    proc = subprocess.Popen(
        _cmd("train", str(path), "--quiet"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "step-0000002").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = lmtune("train", str(path), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(ref, run)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # a half-written one was cleared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_two_nodes_reach_the_weights_of_one_process(tmp_path: Path) -> None:
    """torchrun --nnodes 2 --nproc-per-node 1 through `lmtune train --nnodes 2 --node-rank R`,
    both "machines" on 127.0.0.1, each started here."""
    sections = _sections(tmp_path)
    ref = _reference(tmp_path, sections)
    path, run = _yaml(tmp_path, "nodes", sections)
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            _cmd(
                "train",
                str(path),
                "train.batch_size=4",
                "--quiet",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
            ),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=400) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    assert '"world_size": 2' in (run / "summary.json").read_text()
    _assert_same_weights(ref, run)
