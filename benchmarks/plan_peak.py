"""Measure one process's training memory on CPU and print it beside the planner's figures.

    python benchmarks/plan_peak.py MODEL_DIR [MODEL_DIR ...] --batch 4 --length 256
        [--adapter lora] [--precision bf16] [--steps 3]

A MODEL_DIR needs only a config.json (a random Llama is built from it; nothing is loaded).
Each model is measured in its own process forked after the imports, so each peak is its own.
The steps are lmtune's own SFT step: the decoder body, the chunked LM head
(models/lm_head.target_logps), the fused AdamW of train/loop.py, under the loop's
steady_malloc. Prints one JSON line: the peak RSS growth over the process before the model
existed (ru_maxrss), the parameter/gradient/optimizer bytes summed over the real tensors,
and the plan (runtime/plan.py) for the same inputs, one line per model. The memory planner's test and
benchmarks/bench_scale.py both run it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import psutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lmtune.config import Config
from lmtune.models.adapters import apply_adapter
from lmtune.models.lm_head import target_logps
from lmtune.runtime.memory import steady_malloc
from lmtune.runtime.plan import PlanInputs, estimate
from lmtune.runtime.plan_model import measure_shape, model_shape
from lmtune.train.optim import _adamw_kernel


def tensor_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the parameters, their gradients and the optimizer states, from the tensors
    (each storage once: tied weights are one tensor)."""

    def size(ts: list[torch.Tensor]) -> int:
        seen: dict[int, int] = {}
        for t in ts:
            local = t.to_local() if hasattr(t, "to_local") else t  # DTensor: this rank's shard
            seen[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
        return sum(seen.values())

    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "weights": size(params),
        "gradients": size([p.grad for p in params if p.grad is not None]),
        "optimizer": size(states),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    """Build args.model, train `steps` steps, measure; returns the JSON record."""
    torch.manual_seed(0)
    cfg = Config.model_validate(
        {
            "task": "sft",
            "model": {"name_or_path": args.model, "max_length": args.length},
            "adapter": {"type": args.adapter, "dropout": args.lora_dropout},
            "train": {"batch_size": args.batch, "precision": args.precision},
        }
    )
    rss0 = psutil.Process().memory_info().rss
    config = AutoConfig.from_pretrained(args.model)
    model = apply_adapter(AutoModelForCausalLM.from_config(config), cfg.adapter, "sft")
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, **_adamw_kernel(model)
    )
    vocab = config.vocab_size
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    t0 = time.perf_counter()
    with steady_malloc():
        for _ in range(args.steps):
            ids = torch.randint(3, vocab, (args.batch, args.length))
            mask = torch.ones_like(ids)
            mask[0, -args.length // 4 :] = 0  # a padded row, as a real batch has
            labels = ids.masked_fill(mask == 0, -100)
            with amp:
                logp, _, _, _ = target_logps(
                    model, {"input_ids": ids, "attention_mask": mask}, labels
                )
            (-logp.sum() / logp.numel()).backward()
            optimizer.step()
            measured = tensor_bytes(
                list(model.parameters()), optimizer
            )  # gradients still there: before zero_grad
            optimizer.zero_grad(set_to_none=True)
    step_s = (time.perf_counter() - t0) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    inputs = PlanInputs.from_config(cfg)
    plan = estimate(model_shape(cfg), inputs)
    real_shape = estimate(measure_shape(cfg, model, config), inputs)  # same counts, real model
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "length": args.length,
        "adapter": args.adapter,
        "precision": args.precision,
        "tokens_per_s": round(args.batch * args.length / step_s, 1),
        "measured": {**measured, "peak_growth": peak},
        "plan": {
            "weights": plan.weights,
            "gradients": plan.gradients,
            "optimizer": plan.optimizer,
            "activations": plan.activations,
            "logits": plan.logits,
            "temporary": plan.temporary,
            "training_bytes": plan.training_bytes,
            "total": plan.total,
        },
        "plan_from_real_model_equal": real_shape.training_bytes == plan.training_bytes,
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--adapter", default="full", choices=["full", "lora", "dora"])
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    for model in args.models:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: its peak RSS is this model's alone
            code = 1
            try:
                print(json.dumps(run(argparse.Namespace(**{**vars(args), "model": model}))))
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"measuring {model} failed")


if __name__ == "__main__":
    main()
