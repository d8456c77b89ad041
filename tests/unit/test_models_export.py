"""Save / reload / merge: identical logits through every route, formats others can load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lmtune.config import AdapterConfig, ModelConfig
from lmtune.errors import UserError
from lmtune.models.adapters import apply_adapter
from lmtune.models.export import META_FILE, export_merged, load_trained, save_model
from lmtune.models.load import load_model, load_tokenizer
from tiny import (
    make_bert_tokenizer,
    make_causal,
    make_encoder_classifier,
    make_tokenizer,
    save_tiny,
)

LABELS = ["neg", "pos"]


def base_folder(tmp_path: Path, arch: str) -> Path:
    if arch == "bert":
        tok = make_bert_tokenizer()
        return save_tiny(make_encoder_classifier(tokenizer=tok), tok, tmp_path / "base")
    tok = make_tokenizer()  # no pad: load_tokenizer picks one, as for a real base model
    return save_tiny(make_causal(arch, tok), tok, tmp_path / "base")


def trained(tmp_path: Path, arch: str, adapter: str):
    """Load the base like a run does, apply the adapter and move every trainable weight."""
    task = "classification" if arch == "bert" else "sft"
    mcfg = ModelConfig(name_or_path=str(base_folder(tmp_path, arch)))
    tok = load_tokenizer(mcfg)
    model = load_model(mcfg, task, tok, labels=LABELS if task == "classification" else None)
    model = apply_adapter(model, AdapterConfig(type=adapter, r=4), task)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            # LoRA B starts at zero (a no-op adapter); perturb it and the rest so merging matters.
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval(), tok, task


def inputs(tok) -> dict[str, torch.Tensor]:
    return tok(["The quick brown fox.", "Hello!"], padding=True, return_tensors="pt")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


# peft 0.21's from_pretrained trips a transformers 5 deprecation warning (not ours).
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
@pytest.mark.parametrize(
    ("arch", "adapter"), [("llama", "lora"), ("gpt2", "dora"), ("bert", "lora")]
)
def test_adapter_round_trip_and_merge(tmp_path: Path, arch: str, adapter: str):
    model, tok, task = trained(tmp_path, arch, adapter)
    batch = inputs(tok)
    ref = logits(model, batch)
    with model.disable_adapter():  # the adapter really changes the model (merge is no no-op)
        assert (logits(model, batch) - ref).abs().max() > 1e-3
    out = tmp_path / "model"
    save_model(model, tok, out, extra={"run": "t1"})
    assert (out / "adapter_model.safetensors").is_file() and not (
        out / "model.safetensors"
    ).exists()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["task"] == task and meta["adapter"] == adapter and meta["merged"] is False
    assert meta["base_model"] == str(tmp_path / "base") and meta["run"] == "t1"
    assert meta["labels"] == (LABELS if task == "classification" else None)

    again, tok2, meta2 = load_trained(out)
    assert isinstance(again, PeftModel) and meta2 == meta and not again.training
    torch.testing.assert_close(logits(again, batch), ref, atol=1e-6, rtol=0)

    # Plain peft can load the adapter onto the base too.
    fresh = load_model(
        ModelConfig(name_or_path=str(tmp_path / "base")), task, tok2, labels=meta["labels"]
    )
    torch.testing.assert_close(
        logits(PeftModel.from_pretrained(fresh, str(out)).eval(), batch), ref, atol=1e-6, rtol=0
    )

    merged_dir = export_merged(out, tmp_path / "merged")
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    merged = auto.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(logits(merged, batch), ref, atol=1e-5, rtol=0)
    merged_meta = json.loads((merged_dir / META_FILE).read_text())
    assert merged_meta["merged"] is True and merged_meta["adapter"] == adapter
    if task == "classification":
        assert merged.config.id2label == {0: "neg", 1: "pos"}
    # load_trained reads a merged folder as a full model.
    full, _, _ = load_trained(merged_dir)
    assert not isinstance(full, PeftModel)
    torch.testing.assert_close(logits(full, batch), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "qwen2"])
def test_full_round_trip_and_copy_export(tmp_path: Path, arch: str):
    model, tok, task = trained(tmp_path, arch, "full")
    batch = inputs(tok)
    ref = logits(model, batch)
    out = tmp_path / "model"
    save_model(model, tok, out, extra={"adapter": "head"})
    assert (out / "model.safetensors").is_file()
    again, _, meta = load_trained(out, for_training=True)
    assert meta["adapter"] == "head" and again.training
    torch.testing.assert_close(logits(again.eval(), batch), ref, atol=1e-6, rtol=0)
    copied = export_merged(out, tmp_path / "export")
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in out.iterdir())


def test_save_is_atomic_and_replaces(tmp_path: Path):
    model, tok, _ = trained(tmp_path, "bert", "lora")
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    save_model(model, tok, out)
    save_model(model, tok, out)  # overwriting an existing save works
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    class Boom(Exception):
        pass

    def explode(*_a, **_k):
        raise Boom

    tok.save_pretrained = explode  # fail halfway through writing
    with pytest.raises(Boom):
        save_model(model, tok, out)
    assert (out / "adapter_model.safetensors").is_file()  # previous save untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_builtin_base_is_recorded_portably(tmp_path: Path):
    mcfg = ModelConfig(name_or_path="builtin:minilm")
    tok = load_tokenizer(mcfg)
    model = apply_adapter(
        load_model(mcfg, "classification", tok, labels=LABELS), AdapterConfig(), "classification"
    )
    save_model(model, tok, tmp_path / "m")
    assert json.loads((tmp_path / "m" / META_FILE).read_text())["base_model"] == "builtin:minilm"


def test_load_trained_needs_lmtune_folder(tmp_path: Path):
    with pytest.raises(UserError, match="not an lmtune model folder"):
        load_trained(tmp_path)
