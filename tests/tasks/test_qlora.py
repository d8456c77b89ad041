"""QLoRA: LoRA on a 4-bit (and 8-bit) bitsandbytes base of a tiny random Llama, on the CPU.

Trains (loss falls, adapter moves, the base stays 4-bit), resumes like an uninterrupted run,
saves and reloads the adapter on its quantized base, and exports a merge into the
de-quantized base that plain transformers loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install lmtune[qlora])")

from lmtune.errors import UserError  # noqa: E402
from lmtune.models.export import export_merged, load_trained  # noqa: E402
from lmtune.models.quantize import is_quantized  # noqa: E402
from lmtune.train.run import run_training  # noqa: E402
from runkit import config, instruction_rows, tiny_causal_dir, train_events, write_jsonl  # noqa: E402

QUANT4 = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "fp32"}


def _cfg(tmp_path: Path, quant: dict, **train: object):
    model_dir = tiny_causal_dir(tmp_path)
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(48))
    return config(
        tmp_path,
        task="sft",
        model={"name_or_path": str(model_dir), "quantization": quant},
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        data={"train": str(data), "format": "instruction", "template": "alpaca"},
        train={"epochs": 4, "lr": 3e-2, "eval_before": False, **train},
    )


def test_qlora_trains_saves_reloads_and_exports(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, QUANT4)
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < events[0]["loss"] - 0.05, (events[0], events[-1])
    saved = Path(summary["model_dir"])
    lora_b = [
        v for k, v in load_file(str(saved / "adapter_model.safetensors")).items() if "lora_B" in k
    ]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every one moved
    meta = json.loads((saved / "lmtune_model.json").read_text())
    assert meta["quantization"]["bits"] == 4

    # Reloaded on its 4-bit base: the base's projections are bitsandbytes 4-bit layers.
    model, tok, _ = load_trained(saved)
    assert is_quantized(model)
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    ids = tok("### Instruction:\nsay hi", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        quant_logits = model(input_ids=ids).logits

    # Export: merged into the de-quantized base, in a chosen dtype, loadable by plain transformers.
    dequant, _, _ = load_trained(saved, dequantize_to=torch.float32)
    assert not is_quantized(dequant)
    with torch.no_grad():
        dequant_logits = dequant(input_ids=ids).logits
    # The de-quantized weights are exactly what the 4-bit forward multiplies by.
    torch.testing.assert_close(dequant_logits, quant_logits, atol=1e-4, rtol=1e-4)
    out = export_merged(saved, tmp_path / "merged", dtype="fp32")
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(out))
    assert getattr(plain.config, "quantization_config", None) is None
    assert plain.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    with torch.no_grad():
        merged_logits = plain(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, dequant_logits, atol=1e-4, rtol=1e-4)
    exported_meta = json.loads((out / "lmtune_model.json").read_text())
    assert exported_meta["merged"] and exported_meta["dequantized_from"]["bits"] == 4

    bf16 = export_merged(saved, tmp_path / "merged-bf16", dtype="bf16")
    plain16 = AutoModelForCausalLM.from_pretrained(str(bf16), dtype="auto")
    assert plain16.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits16 = plain16(input_ids=ids).logits.float()
    torch.testing.assert_close(logits16, dequant_logits, atol=0.05, rtol=0.05)


def test_qlora_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = _cfg(tmp_path / "a", QUANT4, epochs=2, save_every=2)
    run_training(full, quiet=True)
    cut = _cfg(tmp_path / "b", QUANT4, epochs=2, save_every=2)
    assert "interrupted_at" in run_training(cut, quiet=True, stop_after=2)
    run_training(cut, quiet=True, resume=True)
    a = load_file(str(Path(full.run.output_dir) / "model" / "adapter_model.safetensors"))
    b = load_file(str(Path(cut.run.output_dir) / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_8bit_base_trains(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"bits": 8}, epochs=3)
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < events[0]["loss"]
    model, _, _ = load_trained(Path(summary["model_dir"]))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear8bitLt" and layer.weight.dtype == torch.int8


@pytest.mark.parametrize("adapter", ["full", "head"])
def test_quantized_base_refuses_full_and_head(tmp_path: Path, adapter: str) -> None:
    with pytest.raises(Exception, match="lora or dora") as info:
        config(
            tmp_path,
            task="sft",
            model={"quantization": QUANT4},
            adapter={"type": adapter},
        )
    assert "model.quantization" in str(info.value)


def test_quantization_refused_for_classifiers(tmp_path: Path) -> None:
    from lmtune.config import load_config

    with pytest.raises(UserError, match="causal-LM tasks"):
        load_config(None, ["task=classification", "model.quantization.bits=4"])
