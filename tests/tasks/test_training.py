"""Task tier: real training of tiny models through run_training; loss falls, weights change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmtune.train.run import run_training
from runkit import (
    config,
    folder_tensors,
    instruction_rows,
    sentiment_rows,
    tiny_bert_dir,
    tiny_causal_dir,
    train_events,
    write_jsonl,
)


@pytest.mark.parametrize(
    ("arch", "adapter"), [("llama", "lora"), ("gpt2", "full"), ("qwen2", "dora"), ("llama", "full")]
)
def test_sft_learns(tmp_path: Path, arch: str, adapter: str) -> None:
    model_dir = tiny_causal_dir(tmp_path, arch)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(96))
    cfg = config(
        tmp_path,
        task="sft",
        model={"name_or_path": str(model_dir)},
        adapter={"type": adapter, "r": 8, "alpha": 16, "dropout": 0.0},
        data={"train": str(data), "format": "instruction", "template": "alpaca"},
        train={"epochs": 8, "lr": 3e-2 if adapter != "full" else 1e-2},
    )
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    first, last = events[0]["loss"], events[-1]["loss"]
    # A random tiny LM's lm_head (std 0.02, hidden 32) caps its logits near uniform; adapters
    # cannot change lm_head, so they can only move the loss a little. Full FT must move it a lot.
    assert last < (0.8 * first if adapter == "full" else first - 0.1), (first, last)
    assert summary["best_eval"]["eval_loss"] < summary["eval_before"]["eval"]["eval_loss"]
    saved = Path(summary["model_dir"])
    assert (saved / "lmtune_model.json").is_file()
    if adapter == "full":
        before, after = folder_tensors(model_dir), folder_tensors(saved)
        changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
        assert len(changed) > len(before) // 2
    else:
        adapter_w = load_file(str(saved / "adapter_model.safetensors"))
        lora_b = [v for k, v in adapter_w.items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it moved


@pytest.mark.parametrize("adapter", ["full", "lora", "head"])
def test_classification_learns(tmp_path: Path, adapter: str) -> None:
    # Full fine-tuning is shown on a tiny random BERT. Adapters and a lone head need features
    # worth adapting (a random encoder's pooled outputs barely differ between inputs), so they
    # run on the real pre-trained builtin:minilm.
    model = str(tiny_bert_dir(tmp_path)) if adapter == "full" else "builtin:minilm"
    data = write_jsonl(tmp_path / "cls.jsonl", sentiment_rows(160))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": model, "max_length": 24},
        adapter={"type": adapter, "r": 8, "alpha": 16, "dropout": 0.0},
        data={"train": str(data), "split": {"eval": 0.2, "test": 0.2}},
        train={
            "epochs": 4,
            "lr": {"full": 5e-3, "lora": 2e-3, "head": 1e-2}[adapter],
            "early_stopping": {"metric": "accuracy", "mode": "max"},
        },
    )
    summary = run_training(cfg, quiet=True)
    losses = [e["loss"] for e in train_events(Path(cfg.run.output_dir))]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses  # single steps are noisy
    assert summary["test"]["accuracy"] >= 0.9, summary["test"]
    assert summary["eval_before"]["test"]["accuracy"] <= 0.75
    if adapter == "head":
        assert summary["trainable_params"] == 384 * 2 + 2  # the classifier only
    run = Path(cfg.run.output_dir)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["details"]["confusion_matrix"]["labels"] == ["neg", "pos"]
    assert (run / "errors.jsonl").exists()
    for name in ("summary.json", "metrics.jsonl", "config.yaml", "data_report.json"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    for key in (
        "train_runtime_s",
        "train_samples_per_s",
        "train_tokens_per_s",
        "peak_rss_mb",
        "final_train_loss",
        "best_eval",
        "best_checkpoint",
    ):
        assert s.get(key) is not None, key


@pytest.mark.parametrize("eval_precision", ["fp32", "train"])
def test_evals_run_in_fp32_unless_asked(tmp_path: Path, monkeypatch, eval_precision: str) -> None:
    # The evals pick the kept checkpoint: by default they must see the fp32 model that eval,
    # serve and the test split read later, not the bf16 autocast the steps train under.
    from lmtune.tasks.classification import ClassificationTask

    seen: dict[str, list[bool]] = {"loss": [], "evaluate": []}
    for name in seen:
        original = getattr(ClassificationTask, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            seen[_name].append(torch.is_autocast_enabled("cpu"))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ClassificationTask, name, spy)
    data = write_jsonl(tmp_path / "cls.jsonl", sentiment_rows(48))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(tiny_bert_dir(tmp_path))},
        adapter={"type": "full"},
        data={"train": str(data), "split": {"eval": 0.25}},
        train={
            "epochs": 1,
            "eval_every": 2,
            "eval_before": False,
            "precision": "bf16",
            "eval_precision": eval_precision,
        },
    )
    summary = run_training(cfg, quiet=True)
    assert seen["loss"] and all(seen["loss"])  # training under bf16 autocast
    assert len(seen["evaluate"]) >= 2
    # Evaluations during training follow eval_precision; the last call is the kept model on
    # the eval split after training (no test split here), read in fp32 as `lmtune eval` does.
    assert set(seen["evaluate"][:-1]) == {eval_precision == "train"}
    assert seen["evaluate"][-1] is False
    assert summary["precision"] == "bf16"
    assert summary["eval_precision"] == ("fp32" if eval_precision == "fp32" else "bf16")
