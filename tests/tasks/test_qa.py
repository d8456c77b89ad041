"""Task tier: a tiny BERT learns synthetic extractive QA through run_training (task qa)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForQuestionAnswering

from lmtune.config import Config
from lmtune.tasks.qa import QATask
from lmtune.train.run import run_training
from runkit import config, qa_rows, tiny_qa_dir, train_events
from tiny import make_bert_tokenizer


def test_tiny_bert_learns_span_extraction_with_lora(tmp_path: Path) -> None:
    rows = qa_rows(48)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(
        tmp_path,
        task="qa",
        model={"name_or_path": str(tiny_qa_dir(tmp_path)), "max_length": 64},
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        qa={"doc_stride": 16, "max_answer_length": 4},
        # eval = the training rows: the test asks whether the model fits what it saw
        data={"eval": str(data), "train": str(data)},
        train={
            "epochs": 8,
            "lr": 3e-2,
            "eval_each_epoch": False,
            "early_stopping": {"metric": "exact", "mode": "max"},
        },
    )
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < 0.5 * events[0]["loss"], (events[0]["loss"], events[-1]["loss"])
    before, best = summary["eval_before"]["eval"], summary["best_eval"]
    assert before["exact"] < 20.0 and best["exact"] >= before["exact"] + 50.0, (before, best)
    assert best["f1"] >= best["exact"] and best["eval_loss"] < before["eval_loss"]
    # The span head trains in full beside the adapters and is saved with them.
    saved = Path(summary["model_dir"])
    weights = load_file(str(saved / "adapter_model.safetensors"))
    assert any("qa_outputs" in k for k in weights)
    meta = json.loads((saved / "lmtune_model.json").read_text())
    assert meta["task"] == "qa" and meta["qa"]["allow_no_answer"] is False


def test_batch_loss_ignores_padding_and_sums_windows(tmp_path: Path) -> None:
    """Loss of a padded batch == sum of each window's loss alone (what 4x2 == 8x1 needs)."""
    model = BertForQuestionAnswering.from_pretrained(str(tiny_qa_dir(tmp_path)))
    cfg = Config.model_validate(
        {"task": "qa", "model": {"max_length": 40}, "qa": {"doc_stride": 8}}
    )
    task = QATask(make_bert_tokenizer(), cfg)
    feats = [f for r in qa_rows(6, seed=3) for f in task.encode(r)]
    assert len({f["length"] for f in feats}) > 1  # different lengths: the batch is padded
    with torch.no_grad():
        total, units = task.loss(model, task.collate(feats))
        alone = sum(float(task.loss(model, task.collate([f]))[0]) for f in feats)
    assert float(units) == len(feats)
    assert float(total) == pytest.approx(alone, rel=1e-5)
