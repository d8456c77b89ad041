"""Scale benchmark: random Llamas (~100M and ~400M parameters, vocab 32k, length 512) trained a
few steps by `lmtune train` on this CPU, with 1 and 2 processes under none / ddp / fsdp and
gradient checkpointing off / on. Prints tokens/s and per-process peak memory, the memory
planner's prediction beside each, and the per-process bytes of weights + gradients +
optimizer states summed over the real tensors (each rank's local shards under FSDP).

    python benchmarks/bench_scale.py                        # 100m and 400m, every combination
    python benchmarks/bench_scale.py --sizes 100m --steps 3
    python benchmarks/bench_scale.py --sizes tiny --steps 2 # seconds: the smoke test's run

A combination the installed lmtune rejects (a config key it does not know yet, a strategy it
cannot run) is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

# name -> (hidden, layers, intermediate, heads); vocab 32,000, embeddings tied
SIZES = {
    "tiny": (64, 2, 172, 4),
    "100m": (768, 12, 2048, 12),
    "400m": (1024, 28, 2816, 16),
}
# (processes, strategy): `none` is one process only
LAYOUTS = [(1, "none"), (2, "ddp"), (2, "fsdp")]
SKIPPED = 3  # worker exit code: lmtune refused the configuration
GiB = 1024**3


def save_model(out: Path, size: str, length: int) -> Path:
    """A random Llama of `size` over MiniLM's WordPiece vocabulary (padded to 32k)."""
    import torch
    from make_tiny_llama import lm_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    hidden, layers, inter, heads = SIZES[size]
    tok = lm_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(512, length),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def write_data(path: Path, rows: int, words: int) -> Path:
    """Rows of random English words, each longer than the training length."""
    rng = random.Random(0)
    vocab = "the model learns from data and each step moves its weights a little".split()
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))}) + "\n")
    return path


def run_config(model: Path, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The lmtune config of one run: only training, no evaluation or test split."""
    return {
        "task": "sft",
        "run": {"name": "bench-scale", "output_dir": str(out), "seed": 0},
        "model": {"name_or_path": str(model), "max_length": args.length},
        "adapter": {"type": "full"},
        "data": {
            "train": str(data),
            "format": "text",
            "split": {"eval": 0.0, "test": 0.0},
            "clean": {"pii": False, "secrets": False, "dedupe": False},
            "leakage": {"check": False},
        },
        "train": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "precision": "fp32",
            "eval_before": False,
            "eval_each_epoch": False,
            "log_every": 1,
        },
    }


# ---- the worker: one lmtune training process ----------------------------------------------


def worker(cfg_path: str, overrides: list[str], result: str) -> int:
    """Train as `lmtune train` does; record tensor bytes after the first optimizer step and
    this process's peak RSS. Exit SKIPPED when lmtune refuses the configuration."""
    import psutil
    import torch

    from lmtune.config import load_config
    from lmtune.errors import UserError
    from lmtune.runtime.dist import Dist
    from lmtune.train.run import run_training

    rss0 = psutil.Process().memory_info().rss
    measured: dict[str, int] = {}

    def after_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if measured:
            return
        from plan_peak import tensor_bytes  # noqa: PLC0415 - the one tensor-size measure

        # The optimizer's view: every trained tensor (the frozen ones add to weights only).
        measured.update(
            tensor_bytes([p for g in optimizer.param_groups for p in g["params"]], optimizer)
        )

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(after_step)  # every optimizer's step, lmtune's included
    try:
        cfg = load_config(cfg_path, overrides)
        summary = run_training(cfg, quiet=True)
    except UserError as exc:
        print(f"lmtune refused: {exc}".splitlines()[0])
        return SKIPPED
    finally:
        Dist.get().close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{result}.{rank}").write_text(
        json.dumps(
            {
                "tokens_per_s": summary.get("train_tokens_per_s"),
                "peak_rss": peak,
                "rss_before": rss0,
                "tensors": measured,
            }
        )
    )
    return 0


# ---- the driver -----------------------------------------------------------------------------


def plan_for(cfg: dict[str, Any], overrides: list[str], nproc: int) -> Any:
    """The memory planner's figures for this run (read with the same config + overrides)."""
    import dataclasses

    import yaml

    from lmtune.config import Config, apply_overrides
    from lmtune.runtime.plan import PlanInputs, estimate
    from lmtune.runtime.plan_model import model_shape

    known = [o for o in overrides if not o.startswith(("train.distributed", "train.gradient_c"))]
    conf = Config.model_validate(apply_overrides(yaml.safe_load(yaml.safe_dump(cfg)), known))
    inputs = PlanInputs.from_config(conf, nproc=nproc)
    for o in overrides:  # the keys this lmtune may not know yet, given to the planner directly
        key, value = o.split("=", 1)
        if key == "train.distributed.strategy":
            inputs = dataclasses.replace(inputs, strategy=value)
        if key == "train.gradient_checkpointing":
            inputs = dataclasses.replace(inputs, gradient_checkpointing=value == "true")
    return estimate(model_shape(conf), inputs)


def run_one(size: str, nproc: int, strategy: str, ckpt: bool, args: argparse.Namespace) -> dict:
    """Train one combination in fresh processes; returns its row (or why it was skipped)."""
    work = Path(args.work)
    model = save_model(work / f"llama-{size}", size, args.length)
    data = write_data(
        work / "data.jsonl", rows=max(64, 4 * args.batch * args.steps), words=args.length
    )
    name = f"{size}-{nproc}p-{strategy}-ckpt{int(ckpt)}"
    cfg = run_config(model, data, work / "runs" / name, args)
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(json.dumps(cfg))
    overrides = []
    if strategy != "none":
        overrides.append(f"train.distributed.strategy={strategy}")
    if ckpt:
        overrides.append("train.gradient_checkpointing=true")
    result = work / f"{name}.json"
    me = [str(Path(__file__).resolve()), "--worker", str(cfg_path), "--result", str(result)]
    launch = (
        [sys.executable]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "benchmarks")]),
    }
    t0 = time.perf_counter()
    r = subprocess.run([*launch, *me, "--", *overrides], capture_output=True, text=True, env=env)
    row: dict[str, Any] = {
        "size": size,
        "nproc": nproc,
        "strategy": strategy,
        "checkpointing": ckpt,
    }
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).splitlines()
        # lmtune's own reason first; a crash otherwise (torchrun's summary lines come last)
        reason = [x for x in lines if "refused" in x] or [x for x in lines if "Error" in x]
        row["skipped"] = (reason or [f"exit {r.returncode}"])[0].strip()[:300]
        return row
    ranks = [json.loads(Path(f"{result}.{i}").read_text()) for i in range(nproc)]
    plan = plan_for(cfg, overrides, nproc)
    row.update(
        wall_s=round(time.perf_counter() - t0, 1),
        tokens_per_s=ranks[0]["tokens_per_s"],
        peak_rss_gib=[round(x["peak_rss"] / GiB, 3) for x in ranks],
        state_gib=[round(sum(x["tensors"].values()) / GiB, 3) for x in ranks],
        plan_total_gib=round(plan.total / GiB, 3),
        plan_state_gib=round((plan.weights + plan.gradients + plan.optimizer) / GiB, 3),
    )
    return row


def print_row(row: dict[str, Any]) -> None:
    """One line per combination: measured beside planned."""
    head = (
        f"{row['size']:>5} {row['nproc']}p {row['strategy']:<4} "
        f"ckpt {'on ' if row['checkpointing'] else 'off'}"
    )
    if "skipped" in row:
        print(f"{head}  skipped: {row['skipped']}", flush=True)
        return
    print(
        f"{head}  {row['tokens_per_s']:>8.1f} tokens/s  peak RSS/process "
        f"{'/'.join(f'{x:.2f}' for x in row['peak_rss_gib'])} GiB (plan {row['plan_total_gib']:.2f})"
        f"  weights+grads+optimizer/process {'/'.join(f'{x:.3f}' for x in row['state_gib'])} GiB "
        f"(plan {row['plan_state_gib']:.3f})",
        flush=True,
    )


def main() -> None:
    """Every combination of the chosen sizes; a table of lines and a JSON file."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100m,400m", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=512)
    p.add_argument(
        "--layouts",
        default=",".join(f"{n}:{s}" for n, s in LAYOUTS),
        help="comma list of PROCESSES:STRATEGY",
    )
    p.add_argument("--checkpointing", default="off,on", help="comma list of off / on")
    p.add_argument("--work", default=str(REPO / "benchmarks" / "out" / "scale"))
    p.add_argument("--out", default=None, help="JSON file for the rows")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        raise SystemExit(worker(args.worker, args.overrides, args.result))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        for layout in args.layouts.split(","):
            nproc, strategy = int(layout.split(":")[0]), layout.split(":")[1]
            for ckpt in [c == "on" for c in args.checkpointing.split(",")]:
                rows.append(run_one(size, nproc, strategy, ckpt, args))
                print_row(rows[-1])
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
