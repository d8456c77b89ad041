"""What a run cost on its device: peak GPU memory, model FLOPs, MFU, the attention kernel.

MFU (model FLOPs utilisation, PaLM appendix B) = model FLOPs per token x tokens/s / the
device's peak. Model FLOPs per trained token are 6 x N (forward 2N, backward 4N) for the N
weights that take part in a matmul, plus 12 x layers x hidden x sequence length for the
attention scores and values. They count what the model needs, not what the run spends:
recomputation under activation checkpointing is not counted, and a LoRA step is counted like
a full one (its frozen weights still take part in the forward and backward matmuls).
"""

from __future__ import annotations

from typing import Any

import torch

from lmtune.runtime.weights import base_of

# Dense (no sparsity) tensor-core peak in TFLOPS for bf16 (fp16 where the GPU has no bf16),
# from NVIDIA's data sheets. First match of a name fragment in torch.cuda.get_device_name().
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16
    ("T4", 65.0),  # fp16
)


def peak_tflops(device_name: str) -> float | None:
    """The known dense bf16 peak (TFLOPS) of a GPU by its name; None when it is not listed."""
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


def matmul_params(model: torch.nn.Module) -> int:
    """Weights that take part in a matmul per token: all but the input embedding (a lookup);
    a tied output head is counted once as the matmul it is. Quantized weights count as the
    number of weights they hold, not their packed storage."""
    base = base_of(model)
    emb = getattr(base, "get_input_embeddings", lambda: None)()
    out = getattr(base, "get_output_embeddings", lambda: None)()
    total = 0
    for p in base.parameters():
        quant_state = getattr(p, "quant_state", None)
        total += (
            int(torch.Size(quant_state.shape).numel()) if quant_state is not None else p.numel()
        )
    if emb is not None:
        total -= emb.weight.numel()
        if out is not None and out.weight is emb.weight:
            total += emb.weight.numel()
    return total


def flops_per_token(n_params: int, n_layers: int = 0, hidden: int = 0, seq_len: int = 0) -> float:
    """Training FLOPs per token: 6N for the weights + 12 * layers * hidden * seq_len (attention)."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOPs per second / peak (peak in TFLOPS)."""
    return tokens_per_s * flops_token / (peak * 1e12)


def cuda_memory(device: torch.device) -> dict[str, float]:
    """Peak allocated and reserved CUDA memory of this process on device, in GiB."""
    gib = 1024**3
    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / gib, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / gib, 3),
    }


def device_summary(
    model: torch.nn.Module, tokens_per_s: float, mean_seq_len: float, device: torch.device
) -> dict[str, Any]:
    """summary.json's device block: the attention kernel, and on CUDA the GPU, its peak
    memory, model FLOPs per token and MFU against the named peak."""
    base = base_of(model)
    config = getattr(base, "config", None)
    out: dict[str, Any] = {
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "device": str(device),
    }
    if device.type != "cuda":
        return out
    name = torch.cuda.get_device_name(device)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    flops = flops_per_token(matmul_params(model), n_layers, hidden, int(mean_seq_len))
    peak = peak_tflops(name)
    out.update(cuda_memory(device))
    out.update(
        gpu=name,
        model_flops_per_token=flops,
        peak_tflops=peak,
        peak_tflops_source=f"{name}: dense bf16 tensor-core peak" if peak else "unknown GPU",
        mfu=round(mfu(tokens_per_s, flops, peak), 4) if peak else None,
    )
    return out
