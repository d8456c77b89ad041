"""fp16 mixed precision with dynamic loss scaling trains on the CPU (GradScaler('cpu'))."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmtune.train import session
from lmtune.train.run import run_training
from runkit import config, instruction_rows, tiny_causal_dir, train_events, write_jsonl


def test_fp16_run_trains_on_cpu(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(32))
    cfg = config(
        tmp_path,
        task="sft",
        model={
            "name_or_path": str(tiny_causal_dir(tmp_path)),
            "attn_implementation": "auto",
        },
        adapter={"type": "full"},
        data={"train": str(data), "format": "instruction", "template": "alpaca"},
        train={"epochs": 3, "lr": 2e-2, "precision": "fp16", "eval_before": False},
    )
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert summary["precision"] == "fp16" and summary["attn_implementation"] == "sdpa"
    assert events[-1]["loss"] < 0.9 * events[0]["loss"], (events[0], events[-1])


def test_fp16_resume_keeps_the_loss_scale(tmp_path: Path, monkeypatch: Any) -> None:
    # A high first scale and a short growth interval make the scale move in a few steps
    # (overflows halve it, good steps double it), so a resume that forgot it would differ.
    made: list[torch.amp.GradScaler] = []

    def scaler(dtype: Any, device: torch.device) -> torch.amp.GradScaler:
        made.append(torch.amp.GradScaler(device.type, init_scale=2.0**24, growth_interval=2))
        return made[-1]

    monkeypatch.setattr(session, "grad_scaler", scaler)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(24))
    model = str(tiny_causal_dir(tmp_path))

    def cfg(name: str) -> Any:
        return config(
            tmp_path / name,
            task="sft",
            model={"name_or_path": model},
            adapter={"type": "full"},
            data={"train": str(data), "format": "instruction", "template": "alpaca"},
            train={
                "max_steps": 8,
                "batch_size": 4,
                "lr": 2e-2,
                "precision": "fp16",
                "eval_before": False,
                "save_every": 4,
            },
        )

    run_training(cfg("a"), quiet=True)
    whole = made[-1].state_dict()
    assert whole["scale"] != 2.0**24  # the scale moved: the comparison below means something
    cut = cfg("b")
    assert "interrupted_at" in run_training(cut, quiet=True, stop_after=4)
    ckpt = sorted((Path(cut.run.output_dir) / "checkpoints").glob("step-*"))[-1]
    saved = json.loads((ckpt / "state.json").read_text())
    assert saved["scaler"]["scale"] == made[-1].state_dict()["scale"]
    run_training(cut, quiet=True, resume=True)
    assert made[-1].state_dict() == whole
