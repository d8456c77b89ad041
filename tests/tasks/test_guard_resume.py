"""The divergence guard (a NaN stops the run, nothing non-finite is saved) and the resume
checks (a checkpoint resumes only into the run it was written by, old states still load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lmtune.errors import UserError
from lmtune.train.run import run_training
from lmtune.train.state import TrainState
from runkit import (
    config,
    folder_tensors,
    instruction_rows,
    run_cli,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    write_jsonl,
)


def _strict(text: str) -> Any:
    """json.loads that refuses NaN / Infinity (as strict parsers in other languages do)."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_lr_1e6_stops_with_exit_2_and_saves_nothing_non_finite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(48))
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "task": "sft",
                "model": {"name_or_path": str(model_dir), "max_length": 160},
                "adapter": {"type": "lora", "r": 4, "alpha": 8},
                "data": {"train": str(data), "format": "instruction", "template": "alpaca"},
                "run": {"output_dir": str(run)},
                "train": {"epochs": 20, "batch_size": 8, "save_every": 1, "eval_every": 1},
            }
        )
    )
    code, out = run_cli(capsys, "train", str(cfg), "train.lr=1e6", "--quiet")
    assert code == 2, out
    assert "training diverged at step" in out and "Traceback" not in out
    assert "train.lr" in out and "fp32" in out and "train.max_grad_norm" in out
    step = int(out.split("training diverged at step ")[1].split(":")[0])
    assert step > 1  # the first steps were finite and were saved; then the guard stopped it
    assert not (run / "model").exists()
    saved = [run / "best"] + sorted((run / "checkpoints").glob("step-*"))
    assert len(saved) >= 2
    for folder in saved:
        for name, t in folder_tensors(folder).items():
            assert torch.isfinite(t).all(), (folder, name)
    for file in run.rglob("*.json"):
        _strict(file.read_text())  # state.json, best/ metadata: no bare NaN anywhere


def test_summary_is_strict_json_when_a_value_is_not_finite(tmp_path: Path) -> None:
    model_dir = tiny_bert_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(40))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "full"},
        data={"train": str(data)},
        train={"max_steps": 2},
    )
    run_training(cfg, quiet=True)
    # Resumed at its end: no step runs, so the last train loss is unknown (was a bare NaN).
    summary = run_training(cfg, quiet=True, resume=True)
    assert summary["final_train_loss"] is None
    text = (Path(cfg.run.output_dir) / "summary.json").read_text()
    assert _strict(text)["final_train_loss"] is None


def _classification(tmp_path: Path, **train: Any) -> Any:
    model_dir = tmp_path / "tiny-bert"
    if not model_dir.is_dir():
        tiny_bert_dir(tmp_path)
    data = tmp_path / "d.jsonl"
    if not data.is_file():
        write_jsonl(data, sentiment_rows(48))
    return config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(model_dir)},
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        data={"train": str(data), "split": {"eval": 0.0}},
        train={"max_steps": 6, "batch_size": 4, "save_every": 2, "eval_before": False, **train},
    )


def test_resume_refuses_another_run_and_force_accepts_safe_changes(tmp_path: Path) -> None:
    base = _classification(tmp_path)
    assert run_training(base, quiet=True, stop_after=3) == {"interrupted_at": 3}

    def refused(cfg: Any, force: bool = False) -> str:
        with pytest.raises(UserError) as err:
            run_training(cfg, quiet=True, resume=True, force=force)
        return " ".join(str(err.value).split())

    rank = base.model_copy(update={"adapter": base.adapter.model_copy(update={"r": 8})})
    msg = refused(rank, force=True)  # the adapter's shape can never change, --force or not
    assert "adapter.r: checkpoint 4, now 8" in msg and "step-0000002" in msg
    msg = refused(_classification(tmp_path, batch_size=2))
    assert "train.batch_size: checkpoint 4, now 2" in msg
    assert "data:" not in msg  # same rows, same encoding: the data fingerprint agrees
    other_data = write_jsonl(tmp_path / "other.jsonl", sentiment_rows(48, seed=3))
    moved = base.model_copy(
        update={"data": base.data.model_copy(update={"train": str(other_data)})}
    )
    assert "data: checkpoint" in refused(moved)
    both = _classification(tmp_path, lr=1e-2, grad_accum=2)
    msg = refused(both, force=True)
    assert "train.grad_accum: checkpoint 1, now 2" in msg and "train.lr" in msg
    longer = _classification(tmp_path, lr=1e-2, max_steps=8)
    msg = refused(longer)  # safe, but only with --force
    assert "train.lr: checkpoint 0.005, now 0.01" in msg and "--force" in msg
    assert "train.max_steps: checkpoint 6, now 8" in msg
    summary = run_training(longer, quiet=True, resume=True, force=True)
    assert summary["train_steps"] == 8
    events = [json.loads(x) for x in (Path(longer.run.output_dir) / "metrics.jsonl").open()]
    lrs = {e["step"]: e["lr"] for e in events if e["event"] == "train"}
    assert lrs[3] == pytest.approx(1e-2 * (8 - 3) / 8)  # the new peak and length, linear decay


def test_old_checkpoints_load_or_are_refused_and_stale_folders_go(tmp_path: Path) -> None:
    cfg = _classification(tmp_path)
    full = _classification(tmp_path / "full")
    run_training(full, quiet=True)
    run_training(cfg, quiet=True, stop_after=3)
    ckpts = Path(cfg.run.output_dir) / "checkpoints"
    last = ckpts / "step-0000002"
    state = json.loads((last / "state.json").read_text())
    assert state["version"] == 1 and state["fingerprint"]["train.batch_size"] == 4
    # What releases before the versioned state wrote: the same keys, no version, no fingerprint.
    legacy = {k: v for k, v in state.items() if k not in ("version", "fingerprint")}
    (last / "state.json").write_text(json.dumps(legacy))
    assert TrainState.from_json(json.dumps(legacy), last).step == 2
    # A kill -9 while a checkpoint was written leaves lmtune.atomic's temporary folders.
    stale = [ckpts / ".step-0000004.tmp-0123abcd", ckpts / ".step-0000002.old-89abcdef"]
    for folder in stale:
        folder.mkdir()
        (folder / "trainable.safetensors").write_bytes(b"half")
    run_training(cfg, quiet=True, resume=True)
    assert not any(folder.exists() for folder in stale)
    a = folder_tensors(Path(full.run.output_dir) / "model")
    b = folder_tensors(Path(cfg.run.output_dir) / "model")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6

    newer = {**state, "version": 99}
    with pytest.raises(UserError, match="version 99 is newer"):
        TrainState.from_json(json.dumps(newer), last)
    with pytest.raises(UserError, match="unknown key.*mystery"):
        TrainState.from_json(json.dumps({**legacy, "mystery": 1}), last)
