"""The GPU path's pure pieces, on the CPU: MFU arithmetic, the peak table, attention choice,
fp16 loss scaling (torch.amp.GradScaler('cpu'))."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lmtune.models import load
from lmtune.train.device_stats import (
    device_summary,
    flops_per_token,
    matmul_params,
    mfu,
    peak_tflops,
)
from lmtune.train.precision import apply_update, grad_scaler, precision_name, scaled
from tiny import make_causal, make_tokenizer


def test_peak_table_names_the_gpu() -> None:
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("Some Future GPU") is None


def test_flops_and_mfu_by_hand() -> None:
    # Llama-3.2-1B-like: 1.236e9 matmul weights, 16 layers, hidden 2048, length 2048.
    f = flops_per_token(1_236_000_000, 16, 2048, 2048)
    assert f == 6 * 1_236_000_000 + 12 * 16 * 2048 * 2048
    # 30k tokens/s on a 989 TFLOPS part.
    assert mfu(30_000, f, 989.0) == pytest.approx(30_000 * f / 989e12)
    assert flops_per_token(100) == 600.0


def test_matmul_params_excludes_the_embedding_lookup() -> None:
    tok = make_tokenizer()
    model = make_causal("llama", tok)
    emb = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert matmul_params(model) == (total if tied else total - emb)


def test_device_summary_on_cpu_records_attention_only() -> None:
    model = make_causal("llama", make_tokenizer())
    out = device_summary(model, 1000.0, 64.0, torch.device("cpu"))
    assert out["device"] == "cpu" and "mfu" not in out
    assert out["attn_implementation"] == model.config._attn_implementation


def test_attn_auto_picks_flash_only_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load.resolve_attn_implementation("eager") == "eager"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a)
    )
    assert load.resolve_attn_implementation("auto") == "sdpa"
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real(n, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load.resolve_attn_implementation("auto") == "flash_attention_2"


def test_grad_scaler_skips_an_overflowing_step_on_cpu() -> None:
    assert grad_scaler(torch.bfloat16, torch.device("cpu")) is None
    assert precision_name(torch.float16) == "fp16" and precision_name(None) == "fp32"
    scaler = grad_scaler(torch.float16, torch.device("cpu"))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    scale = scaler.get_scale()
    scaled(model(torch.full((1, 4), float("inf"))).sum(), scaler).backward()
    apply_update(opt, model, 1.0, scaler)
    assert torch.equal(model.weight, before) and scaler.get_scale() == scale / 2
    opt.zero_grad()
    scaled(model(torch.ones(1, 4)).sum(), scaler).backward()
    assert model.weight.grad.abs().max() > 100  # the loss was multiplied by the scale
    apply_update(opt, model, None, scaler)
    # The step used the unscaled gradient (d sum / d W = 1 for every weight): W moved by lr.
    torch.testing.assert_close(model.weight, before - 0.1)
