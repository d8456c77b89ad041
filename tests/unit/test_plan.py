"""The memory planner: exact counts against real tensors, the peak against a measured one,
the arithmetic of strategies / optimizers / quantized bases, and the CLI paths."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lmtune.models.adapters import apply_adapter
from lmtune.models.lm_head import target_logps
from lmtune.runtime import plan as planmod
from lmtune.runtime.plan import PlanInputs, estimate
from lmtune.runtime.plan_model import measure_shape, model_shape
from lmtune.train.optim import _adamw_kernel
from runkit import cli_exit, config, tiny_causal_dir, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()
    )


@pytest.mark.parametrize("adapter", ["full", "lora", "dora"])
def test_weights_gradients_optimizer_equal_the_tensors(tmp_path: Path, adapter: str) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    cfg = config(
        tmp_path, task="sft", model={"name_or_path": str(model_dir)}, adapter={"type": adapter}
    )
    plan = estimate(model_shape(cfg), PlanInputs.from_config(cfg))  # from the config alone

    torch.manual_seed(0)
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(model_dir), cfg.adapter, "sft")
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, **_adamw_kernel(model)
    )
    ids = torch.randint(3, 500, (2, 12))
    logp, _, _, _ = target_logps(model, {"input_ids": ids}, ids)
    (-logp.mean()).backward()
    optimizer.step()
    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert plan.weights == _bytes(params)
    assert plan.gradients == _bytes([p.grad for p in params if p.grad is not None])
    assert plan.optimizer == _bytes(states)
    assert (
        0 < plan.gradients < plan.weights if adapter != "full" else plan.gradients == plan.weights
    )


def test_meta_shape_equals_the_real_model(tmp_path: Path) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    cfg = config(
        tmp_path, task="sft", model={"name_or_path": str(model_dir)}, adapter={"type": "lora"}
    )
    real = apply_adapter(AutoModelForCausalLM.from_pretrained(model_dir), cfg.adapter, "sft")
    meta, measured = model_shape(cfg), measure_shape(cfg, real, real.config)
    assert dataclasses.asdict(meta) == dataclasses.asdict(measured)
    assert meta.layers == 2 and meta.chunked_head and meta.lora_r == 8


def _llama_dirs(root: Path) -> list[Path]:
    dirs = []
    for name, (h, layers, inter, vocab) in {
        "small": (128, 2, 344, 4000),
        "medium": (192, 3, 512, 6000),
        "large": (256, 4, 688, 8000),
    }.items():
        d = root / name
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=h,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=h // 64,
            num_key_value_heads=h // 64,
            tie_word_embeddings=False,
        ).save_pretrained(d)
        dirs.append(d)
    return dirs


# The LoRA case measures a small peak (one size) whose RSS growth moves with what the other
# test worker does at the same time: it missed 25% once in a full `make test`, so it runs
# with the slow tests; the full fine-tune case (three sizes) stays in make test.
@pytest.mark.parametrize("adapter", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_peak_within_25_percent_of_measured(tmp_path: Path, adapter: str) -> None:
    """Three sizes of random Llama, a few real training steps each in its own process."""
    dirs = _llama_dirs(tmp_path) if adapter == "full" else _llama_dirs(tmp_path)[-1:]
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plan_peak.py"), *map(str, dirs)]
        + ["--batch", "4", "--length", "128", "--steps", "4", "--adapter", adapter],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(dirs)
    for row in rows:
        measured, planned = row["measured"], row["plan"]
        for part in ("weights", "gradients", "optimizer"):
            assert planned[part] == measured[part], (part, row)
        ratio = planned["training_bytes"] / measured["peak_growth"]
        assert 0.75 <= ratio <= 1.25, row
        assert row["plan_from_real_model_equal"]


def _shape(tmp_path: Path, adapter: str = "full"):
    cfg = config(
        tmp_path,
        task="sft",
        model={"name_or_path": str(tiny_causal_dir(tmp_path))},
        adapter={"type": adapter},
    )
    return cfg, model_shape(cfg)


def test_strategies_optimizers_quantization_and_checkpointing(tmp_path: Path) -> None:
    cfg, shape = _shape(tmp_path)
    base = PlanInputs(micro_batch=4, seq_len=128, device="cuda")
    one = estimate(shape, base)
    fsdp = estimate(shape, dataclasses.replace(base, strategy="fsdp", nproc=4))
    ddp = estimate(shape, dataclasses.replace(base, strategy="ddp", nproc=4))
    assert fsdp.weights == -(-one.weights // 4) and fsdp.optimizer == -(-one.optimizer // 4)
    assert ddp.weights == one.weights and ddp.grad_buffers == one.gradients
    offload = estimate(shape, dataclasses.replace(base, strategy="fsdp", nproc=4, cpu_offload=True))
    assert (
        offload.weights == 0 and offload.offloaded == fsdp.weights + fsdp.gradients + fsdp.optimizer
    )
    n = shape.trainable_params
    sgd = estimate(shape, dataclasses.replace(base, optimizer="sgd"))
    assert sgd.optimizer == 4 * n
    eight = estimate(shape, dataclasses.replace(base, optimizer="adamw_8bit"))
    assert eight.optimizer < one.optimizer / 2
    ckpt = estimate(shape, dataclasses.replace(base, gradient_checkpointing=True))
    assert ckpt.activations < one.activations / 3
    bf16 = estimate(shape, dataclasses.replace(base, precision="bf16"))
    assert bf16.activations < one.activations
    _, lora = _shape(tmp_path, "lora")
    q4 = estimate(lora, dataclasses.replace(base, quant_bits=4))
    q8 = estimate(lora, dataclasses.replace(base, quant_bits=8))
    full_w = estimate(lora, base).weights
    linear = sum(q for q, _ in lora.quantizable)
    # NF4: half a byte per quantized weight plus block scales; int8: one byte plus row scales
    assert full_w - 4 * linear + linear // 2 < q4.weights < full_w - 4 * linear + 0.6 * linear
    rows = sum(r for _, r in lora.quantizable)
    assert q8.weights == full_w - 3 * linear + 4 * rows


def test_plan_cli_prints_parts_and_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"task: sft\nmodel: {{name_or_path: {model_dir}, max_length: 256}}\n")
    assert cli_exit("plan", str(cfg_file), "train.batch_size=64", "--gpu-memory", "0.52") == 0
    out = capsys.readouterr().out
    for part in (
        "weights",
        "gradients",
        "optimizer states",
        "activations",
        "LM-head logits",
        "total (peak)",
    ):
        assert part in out
    assert "does NOT fit" in out and "train.gradient_checkpointing=true" in out
    assert "largest micro-batch at length 256" in out


def test_train_stops_with_exit_2_when_the_plan_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tiny_causal_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i} of the data"} for i in range(8)])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"task: sft\nmodel: {{name_or_path: {model_dir}}}\ndata: {{train: {data}}}\n"
        f"run: {{output_dir: {tmp_path / 'run'}}}\ntrain: {{max_steps: 1, batch_size: 2}}\n"
    )
    monkeypatch.setattr(planmod, "device_budget", lambda *a, **k: 2**20)  # a 1 MiB device
    assert cli_exit("train", str(cfg_file)) == 2
    err = capsys.readouterr().err
    assert "memory plan" in err and "--no-plan-check" in err and "what makes it fit" in err
    assert not (tmp_path / "run" / "summary.json").exists()
