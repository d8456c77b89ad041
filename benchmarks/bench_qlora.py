"""Measured memory of QLoRA: the base's bytes in 4-bit vs bf16/fp32, and a step's peak vs LoRA.

A random Llama (default: vocab 8000, 8 layers, hidden 1024, intermediate 2816; 106M weights,
90M of them in the blocks' linear layers) is loaded through lmtune (models.load, adapters),
once in fp32 with LoRA and once in 4-bit NF4 with the same LoRA, each in its own subprocess.
Printed: the bytes the loaded base holds (bitsandbytes' packed 4-bit weights with their block
scales, the rest as stored) next to the same weights in bf16 and fp32, and the peak memory of
three optimizer steps, loading excluded (CUDA: max_memory_allocated; CPU: peak RSS during the
steps, less the process's RSS before the model was loaded: weights + activations + gradients +
optimizer states + temporaries).

    python benchmarks/bench_qlora.py [--layers 8 --hidden 1024 --length 256 --batch 2]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
MIB = 1024**2


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM).

    Memory freed while loading (a 4-bit base passes through RAM in fp32 first) stays in the
    heap and in RSS unless malloc_trim hands it back; trimmed first, so it is not counted.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_model(root: Path, args: argparse.Namespace) -> Path:
    """A random Llama and a word-level tokenizer in root/model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"w{i}": i for i in range(4, args.vocab)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 256,
        max_position_embeddings=max(args.length, 256),
        pad_token_id=3,
    )
    torch.manual_seed(0)
    out = root / "model"
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def measure(mode: str, model_dir: str, length: int, batch: int) -> dict[str, Any]:
    """Load the base (fp32 or nf4) with LoRA through lmtune, run 3 steps; bytes and peaks."""
    import torch

    from lmtune.config import AdapterConfig, Config, ModelConfig
    from lmtune.models.adapters import apply_adapter
    from lmtune.models.load import load_model, load_tokenizer
    from lmtune.models.quantize import weight_bytes
    from lmtune.train.optim import build_optimizer

    quant = None
    if mode == "qlora":
        dtype = "bf16" if torch.cuda.is_available() else "fp32"
        quant = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": dtype}
    mcfg = ModelConfig(name_or_path=model_dir, quantization=quant)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(mcfg)
    rss0 = _status_mib("VmRSS")  # libraries and tokenizer, before any weight is loaded
    base = load_model(mcfg, "sft", tok).to(device)
    linear = [m for n, m in base.named_modules() if n.endswith(("_proj",))]
    linear_weights = sum(
        m.weight.numel() if mode == "lora" else m.weight.quant_state.shape.numel() for m in linear
    )
    linear_bytes = sum(weight_bytes(m) for m in linear)
    loaded_bytes = weight_bytes(base)
    total_weights = sum(
        p.quant_state.shape.numel() if hasattr(p, "quant_state") and p.quant_state else p.numel()
        for p in base.parameters()
    )
    model = apply_adapter(base, AdapterConfig(type="lora", r=16, alpha=32, dropout=0.0), "sft")
    model.to(device).train()
    cfg = Config.model_validate({"train": {"lr": 1e-4}})
    opt = build_optimizer(
        cfg, [{"params": [p for p in model.parameters() if p.requires_grad]}], model
    )
    # The peak of the steps only, not of loading (fp32 weights pass through RAM before 4-bit).
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    ids = torch.randint(4, tok.vocab_size, (batch, length), device=device)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / MIB
    else:
        peak = _status_mib("VmHWM") - rss0
    return {
        "mode": mode,
        "device": str(device),
        "weights": total_weights,
        "linear_weights": linear_weights,
        "linear_bytes_mib": linear_bytes / MIB,
        "base_bytes_mib": loaded_bytes / MIB,
        "step_peak_mib": peak,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.length, args.batch)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp), args)
        res = {}
        for mode in ("lora", "qlora"):
            cmd = [sys.executable, __file__, "--one", mode, str(model_dir)]
            cmd += ["--length", str(args.length), "--batch", str(args.batch)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                sys.exit(f"{mode} failed:\n{r.stderr[-3000:]}")
            res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    lo, q = res["lora"], res["qlora"]
    n_lin = lo["linear_weights"]
    print(
        f"model: {lo['weights'] / 1e6:.1f}M weights, {n_lin / 1e6:.1f}M in the blocks' linear layers; device {lo['device']}"
    )
    print("blocks' linear weights:")
    print(
        f"  fp32 {n_lin * 4 / MIB:8.1f} MiB   bf16 {n_lin * 2 / MIB:8.1f} MiB   nf4 (as loaded, with scales) {q['linear_bytes_mib']:8.1f} MiB"
    )
    print("whole base as loaded (embeddings, norms and LM head stay in fp32 under QLoRA):")
    print(
        f"  LoRA base fp32 {lo['base_bytes_mib']:8.1f} MiB   QLoRA base {q['base_bytes_mib']:8.1f} MiB   (all weights in bf16 would be {lo['weights'] * 2 / MIB:.1f} MiB)"
    )
    print(f"peak of 3 LoRA steps (batch {args.batch} x length {args.length}, r=16, AdamW):")
    print(
        f"  LoRA on fp32 base {lo['step_peak_mib']:8.1f} MiB   QLoRA on nf4 base {q['step_peak_mib']:8.1f} MiB   ratio {q['step_peak_mib'] / lo['step_peak_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
