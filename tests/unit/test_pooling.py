"""model.pooling: mean: the masked mean of the last layer feeds the classifier; saved, reloaded
and exported folders give the same logits; wrong uses are user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from lmtune.config import AdapterConfig, ModelConfig
from lmtune.errors import UserError
from lmtune.models.adapters import apply_adapter
from lmtune.models.export import META_FILE, export_merged, load_trained, save_model
from lmtune.models.load import load_model, load_tokenizer
from lmtune.models.pooling import (
    MEAN_POOL_MODEL_TYPE,
    MeanPoolBertForSequenceClassification,
    masked_mean,
)
from runkit import config, sentiment_rows, tiny_bert_dir, write_jsonl
from tiny import make_causal, make_tokenizer, save_tiny

LABELS = ["neg", "pos"]


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_masked_mean_leaves_padding_out() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    torch.testing.assert_close(
        masked_mean(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]])
    )
    torch.testing.assert_close(masked_mean(hidden, None), hidden.mean(1))


def test_mean_pooled_classifier_reads_the_mean_and_ignores_padding(tmp_path: Path) -> None:
    mcfg = ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path)), pooling="mean")
    tok = load_tokenizer(mcfg)
    model = load_model(mcfg, "classification", tok, labels=LABELS).eval()
    assert isinstance(model, MeanPoolBertForSequenceClassification)
    assert model.config.model_type == MEAN_POOL_MODEL_TYPE and model.config.id2label == {
        0: "neg",
        1: "pos",
    }
    assert not hasattr(model.bert, "pooler") or model.bert.pooler is None
    # The encoder weights are the checkpoint's (only the pooler is left out and the head is new).
    cls_model = load_model(
        ModelConfig(name_or_path=mcfg.name_or_path), "classification", tok, labels=LABELS
    )
    torch.testing.assert_close(
        model.bert.embeddings.word_embeddings.weight,
        cls_model.bert.embeddings.word_embeddings.weight,
    )
    alone = tok(["the film was good"], return_tensors="pt")
    padded = tok(
        ["the film was good", "a much longer sentence about a very long and dull film"],
        padding=True,
        return_tensors="pt",
    )
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # really padded
    torch.testing.assert_close(
        _logits(model, alone)[0], _logits(model, padded)[0], atol=1e-5, rtol=0
    )
    with torch.no_grad():
        hidden = model.bert(**alone).last_hidden_state
        torch.testing.assert_close(model(**alone).logits, model.classifier(hidden.mean(1)))
    out = model(**alone, labels=torch.tensor([1]))
    assert out.loss is not None and out.loss > 0


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
def test_lora_mean_pooled_round_trip_and_merged_export(tmp_path: Path) -> None:
    mcfg = ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path)), pooling="mean")
    tok = load_tokenizer(mcfg)
    model = apply_adapter(
        load_model(mcfg, "classification", tok, labels=LABELS),
        AdapterConfig(type="lora", r=4),
        "classification",
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    model.eval()
    batch = tok(["The quick brown fox.", "Hello!"], padding=True, return_tensors="pt")
    ref = _logits(model, batch)
    out = tmp_path / "model"
    save_model(model, tok, out, extra={"pooling": "mean"})
    again, _, meta = load_trained(out)
    assert isinstance(again, PeftModel) and meta["pooling"] == "mean"
    torch.testing.assert_close(_logits(again, batch), ref, atol=1e-6, rtol=0)
    merged_dir = export_merged(out, tmp_path / "merged")
    assert (
        json.loads((merged_dir / "config.json").read_text())["model_type"] == MEAN_POOL_MODEL_TYPE
    )
    # lmtune registers the type, so the Auto class (and load_trained) read the merged folder.
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert isinstance(merged, MeanPoolBertForSequenceClassification)
    torch.testing.assert_close(_logits(merged, batch), ref, atol=1e-5, rtol=0)
    full, _, _ = load_trained(merged_dir)
    torch.testing.assert_close(_logits(full, batch), ref, atol=1e-5, rtol=0)
    assert json.loads((merged_dir / META_FILE).read_text())["pooling"] == "mean"
    # Without lmtune, transformers refuses the folder rather than reading [CLS] through a pooler.
    code = (
        "import sys; from transformers import AutoModelForSequenceClassification as A\n"
        "try:\n    A.from_pretrained(sys.argv[1])\nexcept (ValueError, KeyError) as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(merged_dir)], capture_output=True, text=True, timeout=120
    )
    assert r.stdout.startswith("refused"), r.stdout + r.stderr


def test_mean_pooling_on_the_wrong_model_or_task_is_a_user_error(tmp_path: Path) -> None:
    tok = make_tokenizer()
    llama = save_tiny(make_causal("llama", tok), tok, tmp_path / "llama")
    mcfg = ModelConfig(name_or_path=str(llama), pooling="mean")
    with pytest.raises(UserError, match="needs a BERT encoder.*set model.pooling: cls"):
        load_model(mcfg, "classification", load_tokenizer(mcfg), labels=LABELS)
    bert = ModelConfig(name_or_path=str(tiny_bert_dir(tmp_path)), pooling="mean")
    with pytest.raises(UserError, match="applies to tasks classification and reward, not qa"):
        load_model(bert, "qa", load_tokenizer(bert))


def test_a_mean_pooled_run_records_its_pooling_and_says_how_to_load_it(tmp_path: Path) -> None:
    from lmtune.train.run import run_training

    data = write_jsonl(tmp_path / "d.jsonl", sentiment_rows(48))
    cfg = config(
        tmp_path,
        task="classification",
        model={"name_or_path": str(tiny_bert_dir(tmp_path)), "pooling": "mean"},
        adapter={"type": "lora", "r": 4},
        data={"train": str(data)},
        train={"epochs": 1},
    )
    summary = run_training(cfg, quiet=True)
    model_dir = Path(summary["model_dir"])
    assert json.loads((model_dir / META_FILE).read_text())["pooling"] == "mean"
    assert "import lmtune.models.load" in (model_dir / "MODEL_CARD.md").read_text()
    model, _, _ = load_trained(model_dir)
    assert isinstance(model.get_base_model(), MeanPoolBertForSequenceClassification)
