"""The gpu tier: every device-specific path on a real CUDA GPU (skipped, with the reason,
where there is none). benchmarks/device_check.sh runs it with `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmtune.train.run import run_training
from runkit import config, instruction_rows, tiny_causal_dir, train_events, write_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu tier)"),
]


def _cfg(tmp_path: Path, adapter: str = "lora", model: dict | None = None, **train: object):
    data = write_jsonl(tmp_path / "inst.jsonl", instruction_rows(48))
    return config(
        tmp_path,
        task="sft",
        model={"name_or_path": str(tiny_causal_dir(tmp_path)), **(model or {})},
        adapter={"type": adapter, "r": 8, "alpha": 16, "dropout": 0.0},
        data={"train": str(data), "format": "instruction", "template": "alpaca"},
        train={
            "epochs": 4,
            "lr": 3e-2 if adapter != "full" else 1e-2,
            "eval_before": False,
            **train,
        },
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_reports_cuda_stats(tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = _cfg(tmp_path, "full", precision=precision)
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < 0.9 * events[0]["loss"], (events[0], events[-1])
    assert summary["precision"] == precision and summary["device"].startswith("cuda")
    assert 0 < summary["peak_allocated_gib"] <= summary["peak_reserved_gib"]
    assert summary["model_flops_per_token"] > 0 and summary["gpu"]
    if summary["peak_tflops"] is not None:  # a GPU of the table: MFU is a fraction
        assert 0 < summary["mfu"] < 1


def test_attention_auto_picks_the_installed_kernel(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model={"attn_implementation": "auto"}, precision="bf16", epochs=1)
    summary = run_training(cfg, quiet=True)
    has_flash = importlib.util.find_spec("flash_attn") is not None
    assert summary["attn_implementation"] == ("flash_attention_2" if has_flash else "sdpa")


def test_qlora_on_cuda_trains_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from lmtune.models.export import export_merged, load_trained

    quant = {"bits": 4, "quant_type": "nf4", "compute_dtype": "bf16"}
    cfg = _cfg(tmp_path, model={"quantization": quant}, precision="bf16")
    summary = run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < events[0]["loss"]
    model, tok, _ = load_trained(Path(summary["model_dir"]))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.weight.device.type == "cuda"
    out = export_merged(Path(summary["model_dir"]), tmp_path / "merged", dtype="bf16")
    plain = AutoModelForCausalLM.from_pretrained(str(out), dtype="auto")
    assert plain.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_resume_on_cuda_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full = _cfg(tmp_path / "a", precision="bf16", epochs=2, save_every=2)
    run_training(full, quiet=True)
    cut = _cfg(tmp_path / "b", precision="bf16", epochs=2, save_every=2)
    assert "interrupted_at" in run_training(cut, quiet=True, stop_after=2)
    run_training(cut, quiet=True, resume=True)
    a = load_file(str(Path(full.run.output_dir) / "model" / "adapter_model.safetensors"))
    b = load_file(str(Path(cut.run.output_dir) / "model" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=1e-3)


def test_8bit_optimizer_on_cuda(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = _cfg(tmp_path, "full", precision="bf16", optimizer="paged_adamw_8bit")
    run_training(cfg, quiet=True)
    events = train_events(Path(cfg.run.output_dir))
    assert events[-1]["loss"] < events[0]["loss"]
