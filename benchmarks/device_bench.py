"""Train random Llamas of real shapes with lmtune (LoRA, QLoRA, full) and TRL's SFTTrainer.

The Python half of benchmarks/device_check.sh. On a CUDA GPU the shapes are those of
Llama-3.2-1B (vocab 128256, 16 layers, hidden 2048, 32 heads, 8 kv heads, intermediate 8192)
and Llama-3.1-8B (32 layers, hidden 4096, intermediate 14336) at length 2048, bf16 autocast,
activation checkpointing on, a fixed number of optimizer steps; --cpu-smoke runs the same code
on tiny shapes on the CPU in a couple of steps (make test runs it, so the script cannot rot).

Each case runs in its own subprocess, so its peak memory is its own. tokens/s is measured over
the steps after the first (warm-up) from the per-step log; MFU = 6N(+attention) FLOPs per token
x tokens/s / the GPU's dense bf16 peak (lmtune.train.device_stats). lmtune runs through
run_training with stop_after (the loop as `lmtune train` runs it, without the final save).
The planner's prediction is read from `lmtune plan` when this checkout has it, else n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SHAPES: dict[str, dict[str, int]] = {
    "1B": dict(
        vocab_size=128256,
        num_hidden_layers=16,
        hidden_size=2048,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
    ),
    "8B": dict(
        vocab_size=128256,
        num_hidden_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
    ),
    "tiny": dict(
        vocab_size=512,
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
}
# (shape, method): method is lora / qlora / full (lmtune) or trl-lora (TRL SFTTrainer).
GPU_CASES = [
    ("1B", "lora"),
    ("1B", "trl-lora"),
    ("1B", "qlora"),
    ("1B", "full"),
    ("8B", "lora"),
    ("8B", "trl-lora"),
    ("8B", "qlora"),
]
SMOKE_CASES = [("tiny", "lora"), ("tiny", "trl-lora"), ("tiny", "qlora"), ("tiny", "full")]
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model_dir(shape: str, root: Path, length: int) -> Path:
    """A random Llama of `shape` (bf16 safetensors) and a word-level tokenizer with its vocab."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = root / f"llama-{shape}"
    if (out / "config.json").is_file():
        return out
    dims = SHAPES[shape]
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), dims["vocab_size"])})
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
        **dims,
        max_position_embeddings=max(length, 256),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=shape == "1B",
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialising 8B weights on a CPU takes minutes; on a GPU, seconds
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def write_data(path: Path, rows: int, length: int, vocab: int) -> Path:
    """Rows of `length - 2` random words (with BOS/EOS: exactly `length` tokens)."""
    import random

    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            words = " ".join(f"w{rng.randrange(4, vocab)}" for _ in range(length - 2))
            f.write(json.dumps({"text": words}) + "\n")
    return path


def lmtune_config(case: dict[str, Any], model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    """The lmtune run of one case, as a config dict."""
    from lmtune.config import TrainConfig

    gpu = case["gpu"]
    model: dict[str, Any] = {"name_or_path": str(model_dir), "max_length": case["length"]}
    if gpu:
        model["attn_implementation"] = "auto"
    if case["method"] == "qlora":
        dtype = "bf16" if gpu else "fp32"
        model["quantization"] = {"bits": 4, "quant_type": "nf4", "compute_dtype": dtype}
    train: dict[str, Any] = {
        "max_steps": case["steps"] + 1,
        "batch_size": case["batch"],
        "lr": 1e-4 if case["method"] != "full" else 1e-5,
        "precision": "bf16" if gpu else "fp32",
        "eval_before": False,
        "eval_each_epoch": False,
        "log_every": 1,
        "max_grad_norm": 1.0,
    }
    if "gradient_checkpointing" in TrainConfig.model_fields:
        train["gradient_checkpointing"] = True
    return {
        "run": {"output_dir": str(out), "seed": 0},
        "task": "sft",
        "model": model,
        "adapter": {"type": "full"}
        if case["method"] == "full"
        else {"type": "lora", "target_modules": TARGETS, **LORA},
        "data": {
            "train": str(data),
            "format": "text",
            "split": {"eval": 0.0},
            "leakage": {"check": False},
            "clean": {"pii": False, "secrets": False, "dedupe": False},
            "bucketing": False,
        },
        "train": train,
    }


def _checkpointing_patch() -> None:
    """Without train.gradient_checkpointing in this checkout, switch checkpointing on here."""
    from lmtune.config import TrainConfig

    if "gradient_checkpointing" in TrainConfig.model_fields:
        return
    import lmtune.models.adapters as adapters

    original = adapters.apply_adapter

    def apply(model: Any, acfg: Any, task: str, **kw: Any) -> Any:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return original(model, acfg, task, **kw)

    adapters.apply_adapter = apply


def _rate(times: list[tuple[int, float, int]]) -> float:
    """tokens/s between the first logged step (warm-up excluded) and the last."""
    (_, t0, n0), (_, t1, n1) = times[0], times[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9)


def run_lmtune(case: dict[str, Any], model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    """One lmtune case; returns tokens/s over the steps after the first, and the model size."""
    import yaml

    from lmtune.config import Config
    from lmtune.train.run import run_training

    cfg_dict = lmtune_config(case, model_dir, data, out)
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(cfg_dict))
    _checkpointing_patch()
    run_training(Config.model_validate(cfg_dict), quiet=True, stop_after=case["steps"])
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [(e["step"], e["elapsed_s"], e["tokens"]) for e in events if e["event"] == "train"]
    return {"tokens_per_s": _rate(times), "steps": len(times)}


def run_trl(case: dict[str, Any], model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    """TRL's SFTTrainer with the same model, data, LoRA, batch, length, precision and checkpointing."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    gpu = case["gpu"]
    stamps: list[tuple[int, float, int]] = []
    tokens_per_step = case["batch"] * case["length"]

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if gpu:
                torch.cuda.synchronize()
            stamps.append((state.global_step, time.perf_counter(), state.global_step))

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if gpu:
        from lmtune.models.load import resolve_attn_implementation

        kwargs["attn_implementation"] = resolve_attn_implementation("auto")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    args = SFTConfig(
        output_dir=str(out),
        max_steps=case["steps"] + 1,
        per_device_train_batch_size=case["batch"],
        learning_rate=1e-4,
        max_length=case["length"],
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=gpu,
        use_cpu=not gpu,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataset_text_field="text",
        packing=False,
        max_grad_norm=1.0,
        dataloader_num_workers=0,
        seed=0,
    )
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )
    ds = load_dataset("json", data_files=str(data), split="train")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.train()
    times = [(s, t, s * tokens_per_step) for s, t, _ in stamps]
    return {"tokens_per_s": _rate(times), "steps": len(times)}


def one_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this process and measure it (the subprocess side)."""
    import torch

    from lmtune.train.device_stats import flops_per_token, matmul_params, mfu, peak_tflops

    root = Path(case["root"])
    model_dir, data = Path(case["model_dir"]), Path(case["data"])
    out = root / f"{case['shape']}-{case['method']}"
    t0 = time.perf_counter()
    if case["method"] == "trl-lora":
        result = run_trl(case, model_dir, data, out)
    else:
        result = run_lmtune(case, model_dir, data, out)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    dims = SHAPES[case["shape"]]
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # parameter count without allocating the weights
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
    flops = flops_per_token(
        matmul_params(meta), dims["num_hidden_layers"], dims["hidden_size"], case["length"]
    )
    if case["gpu"]:
        name = torch.cuda.get_device_name()
        peak = peak_tflops(name)
        result.update(
            device=name,
            peak_gib=torch.cuda.max_memory_allocated() / 1024**3,
            reserved_gib=torch.cuda.max_memory_reserved() / 1024**3,
            mfu=mfu(result["tokens_per_s"], flops, peak) if peak else None,
        )
    else:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.update(device="cpu", peak_gib=rss_kib / 1024**2, mfu=None)
    return result


def has_plan_command() -> bool:
    """Whether this checkout's CLI has `lmtune plan` (asked in-process: no subprocess start-up)."""
    from lmtune.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    return "plan" in names


def planner_prediction(config_path: Path) -> str:
    """The planner's predicted peak for a case config (`lmtune plan`), or n/a with the reason."""
    if not has_plan_command():
        return "n/a (no lmtune plan)"
    cmd = [sys.executable, "-m", "lmtune", "plan", str(config_path), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"n/a ({type(exc).__name__})"
    if r.returncode != 0:
        return "n/a (no lmtune plan)" if "No such command" in r.stderr else "n/a (plan failed)"
    try:
        plan = json.loads(r.stdout)
    except json.JSONDecodeError:
        return "n/a (plan printed no JSON)"
    for key in ("peak_gib", "total_gib", "per_device_gib"):
        if isinstance(plan.get(key), (int, float)):
            return f"{plan[key]:.1f} GiB"
    return "n/a (no peak in plan output)"


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case in its own subprocess (--cpu-smoke: all in one, to pay the imports once);
    prints and returns the table rows."""
    gpu = not args.cpu_smoke
    pairs = SMOKE_CASES if args.cpu_smoke else GPU_CASES
    if args.cases:
        pairs = [c for c in pairs if f"{c[0]}-{c[1]}" in args.cases.split(",")]
    root = Path(args.work).resolve()
    root.mkdir(parents=True, exist_ok=True)
    length = 64 if args.cpu_smoke else args.length
    cases = []
    for shape, method in pairs:
        vocab = SHAPES[shape]["vocab_size"]
        data = write_data(
            root / f"data-{length}.jsonl", (args.steps + 2) * args.batch, length, vocab
        )
        cases.append(
            dict(
                shape=shape,
                method=method,
                steps=args.steps,
                batch=args.batch,
                length=length,
                gpu=gpu,
                root=str(root),
                model_dir=str(make_model_dir(shape, root, length)),
                data=str(data),
            )
        )
    groups = [cases] if args.cpu_smoke else [[c] for c in cases]
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for group in groups:
        r = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(group)],
            capture_output=True,
            text=True,
            env=env,
            timeout=args.case_timeout * len(group),
        )
        if r.returncode != 0:
            print(r.stdout[-2000:] + r.stderr[-4000:], file=sys.stderr)
            error = (r.stderr.strip().splitlines() or ["?"])[-1][:200]
            results = [{"error": error} for _ in group]
        else:
            results = json.loads(r.stdout.strip().splitlines()[-1])
        for case, result in zip(group, results, strict=True):
            row: dict[str, Any] = {"shape": case["shape"], "method": case["method"], **result}
            cfg_path = root / f"{case['shape']}-{case['method']}.yaml"
            row["plan"] = planner_prediction(cfg_path) if cfg_path.is_file() else "n/a (TRL)"
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (
    f"{'shape':<6} {'method':<9} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'plan':>22}  device"
)


def format_row(row: dict[str, Any]) -> str:
    """One line of the result table."""
    if "error" in row:
        return f"{row['shape']:<6} {row['method']:<9} FAILED: {row['error']}"
    mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
    return (
        f"{row['shape']:<6} {row['method']:<9} {row['tokens_per_s']:>10.1f} {mfu:>7} "
        f"{row['peak_gib']:>9.2f} {row['plan']:>22}  {row['device']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU, 2 steps")
    p.add_argument("--steps", type=int, default=None, help="measured optimizer steps per case")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--cases", default="", help="comma list like 1B-lora,8B-qlora (default: all)")
    p.add_argument("--work", default=str(REPO / "benchmarks" / "out" / "device"))
    p.add_argument("--case-timeout", type=int, default=900)
    p.add_argument("--json", default="", help="also write the rows to this file")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps([one_case(case) for case in json.loads(args.one)]))
        return
    if args.steps is None:
        args.steps = 2 if args.cpu_smoke else 8
    print(HEADER, flush=True)
    rows = run_all(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    ratio = {r["shape"]: r for r in rows if r["method"] == "trl-lora" and "error" not in r}
    for row in rows:
        trl = ratio.get(row["shape"])
        if row["method"] == "lora" and trl and "error" not in row:
            print(
                f"ratio lmtune/TRL {row['shape']} LoRA: tokens/s "
                f"{row['tokens_per_s'] / trl['tokens_per_s']:.2f}x, peak memory "
                f"{row['peak_gib'] / trl['peak_gib']:.2f}x"
            )
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
