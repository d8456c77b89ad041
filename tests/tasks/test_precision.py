"""fp16 mixed precision with dynamic loss scaling trains on the CPU (GradScaler('cpu'))."""

from __future__ import annotations

from pathlib import Path

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
