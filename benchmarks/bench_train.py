"""lmtune's training loop vs the Hugging Face `transformers.Trainer`, side by side.

One run trains the same model on the same rows with the same hyperparameters twice per
precision, (a) through lmtune's public path (`lmtune.train.run.run_training(Config)`) and
(b) through `transformers.Trainer`, each in its own subprocess (so peak RSS is per side),
back to back, with the same torch thread count. It prints one table and a ratio line per
(workload, precision), and writes everything as JSON to benchmarks/out/.

Workloads
  classification  builtin:minilm, full fine-tune, first --rows SST-2 train sentences,
                  batch 32, 1 epoch, lr 5e-5, linear schedule, no warmup, max_length 66,
                  eval on the 872 SST-2 dev sentences.
  sft             a tiny random Llama (4 layers, hidden 128) with the MiniLM WordPiece vocab
                  (30,522 tokens: the vocabulary is what makes SFT expensive) on alpaca 1k
                  (first 896 rows train, the rest eval), max_length 256, batch 8, 1 epoch,
                  loss on responses only (both sides get the ids/labels of
                  lmtune.data.templates.encode_sft_row, so the data is identical).

What is measured (the same definition on both sides)
  samples/s, tokens/s  training samples (non-pad tokens) / wall time of the optimizer steps,
                       from the first step to the end of the last one. Tokenization, model
                       loading, the end-of-training evaluation and checkpoint writing are
                       excluded on both sides; they are reported apart (eval s, e2e s).
  final loss           mean of the logged train losses covering the last 10% of the steps
                       (both sides log the mean loss every --log-every steps).
  eval                 classification: accuracy and mean NLL on the dev set; sft: response-
                       token-weighted NLL and next-token accuracy on the eval rows. Both sides
                       evaluate once, after the epoch, inside their training call.
  peak RSS             ru_maxrss of the side's own process.
  cpu util             CPU seconds per wall second of that process: well under the thread
                       count means it waited, usually for other work on the machine.
With --repeat N each side runs N times (alternating which goes first) and the table shows
each side's fastest run, with all runs' step times beside it: other work only ever slows a
run down, so the minimum is the least disturbed measurement.

HF Trainer is given its best fair settings: train_sampling_strategy="group_by_length" (the
5.x name of group_by_length=True) with precomputed lengths, dataloader_num_workers=0 and
pin_memory=False (2 cores: a worker process only competes with the compute threads), the
default fused AdamW (optim="adamw_torch_fused"), a train set cut to whole batches so both
sides make the same number of optimizer updates, and an eval set sorted by length.

Usage
  .venv/bin/python benchmarks/bench_train.py                 # both workloads, fp32 + bf16
  .venv/bin/python benchmarks/bench_train.py --workload classification --precision bf16
  .venv/bin/python benchmarks/bench_train.py --quick         # a smoke run of a few steps
  .venv/bin/python benchmarks/bench_train.py --repeat 3      # best of 3 per side (noisy machines)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_hf import child_hf  # noqa: E402
from benchlib import (  # noqa: E402
    SEED,
    add_common_args,
    child_env,
    child_main,
    common_done,
    final_loss,
    finish,
    lmtune_events,
    run_sides,
    save_tiny_llama,
    write_jsonl,
)

WORKLOADS: dict[str, dict[str, Any]] = {
    "classification": {
        "batch_size": 32,
        "lr": 5e-5,
        "max_length": 66,
        "rows": 4000,
        "eval_rows": 872,
    },
    # A random model learns nothing visible at 5e-5 in one short epoch; 5e-4 shows the loss fall.
    "sft": {"batch_size": 8, "lr": 5e-4, "max_length": 256, "rows": 896, "eval_rows": 104},
}
QUICK = {"classification": {"rows": 256, "eval_rows": 128}, "sft": {"rows": 64, "eval_rows": 32}}


# ----------------------------------------------------------------------------- data prep


def _read_tsv(path: Path) -> list[dict[str, str]]:
    """SST-2 tsv: header `label<TAB>sentence` (train) or `label<TAB>content` (dev)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for line in lines[1:]:
        label, _, text = line.partition("\t")
        if text:
            rows.append({"text": text, "label": label})
    return rows


def prepare_classification(data_dir: Path, work: Path, rows: int, eval_rows: int) -> dict[str, Any]:
    train = _read_tsv(data_dir / "sst2" / "train.tsv")[:rows]
    dev = _read_tsv(data_dir / "sst2" / "dev.tsv")[:eval_rows]
    from lmtune.models.load import resolve_model_path

    return {
        "model": resolve_model_path("builtin:minilm"),
        "train": str(write_jsonl(work / "cls_train.jsonl", train)),
        "eval": str(write_jsonl(work / "cls_eval.jsonl", dev)),
        "labels": sorted({r["label"] for r in train}, key=int),
        "n_train": len(train),
        "n_eval": len(dev),
    }


def prepare_sft(data_dir: Path, work: Path, rows: int, eval_rows: int) -> dict[str, Any]:
    """Alpaca rows + a tiny random Llama saved once, so both sides load identical weights."""
    data = json.loads(
        (data_dir / "instruct_alpaca_1k" / "alpaca_data_1k.json").read_text(encoding="utf-8")
    )
    data = [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in data]
    train, held = data[:rows], data[rows : rows + eval_rows]
    if len(held) < eval_rows:  # fewer rows than asked: evaluate on the tail of train
        held = data[-eval_rows:]
    model_dir = save_tiny_llama(work / "tiny-llama")
    return {
        "model": str(model_dir),
        "train": str(write_jsonl(work / "sft_train.jsonl", train)),
        "eval": str(write_jsonl(work / "sft_eval.jsonl", held)),
        "n_train": len(train),
        "n_eval": len(held),
    }


# ----------------------------------------------------------------------------- children


def child_lmtune(spec: dict[str, Any], t_proc: float) -> dict[str, Any]:
    """lmtune through its public entry point, exactly as `lmtune train` runs it."""
    from lmtune.config import Config
    from lmtune.train.run import run_training

    w, d = spec["workload"], spec["data"]
    run_dir = Path(spec["work"]) / f"lmtune-{w}-{spec['precision']}"
    off = {
        "normalize": False,
        "control_chars": False,
        "dedupe": False,
        "pii": False,
        "secrets": False,
        "min_chars": 0,
    }
    cfg: dict[str, Any] = {
        "run": {"name": f"bench-{w}", "output_dir": str(run_dir), "seed": SEED},
        "task": w,
        "model": {"name_or_path": d["model"], "max_length": spec["max_length"]},
        "adapter": {"type": "full"},
        # Cleaning off: both sides must see the very same rows.
        "data": {
            "train": d["train"],
            "eval": d["eval"],
            "clean": off,
            "leakage": {"check": False},
            "bucketing": True,
        },
        "train": {
            "epochs": 1,
            "batch_size": spec["batch_size"],
            "eval_batch_size": 64,
            "lr": spec["lr"],
            "scheduler": "linear",
            "warmup_steps": 0,
            "warmup_ratio": 0.0,
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "precision": spec["precision"],
            "log_every": spec["log_every"],
            "eval_before": False,
        },
    }
    if w == "classification":
        cfg["data"].update(format="classification", labels=d["labels"])
    else:
        cfg["data"].update(format="instruction", template="alpaca")
    for item in spec.get("lmtune_set", []):  # --lmtune-set key=value (lever experiments)
        from lmtune.config import apply_overrides

        apply_overrides(cfg, [item])
    summary = run_training(Config.model_validate(cfg), quiet=False)
    train_ev, eval_ev = lmtune_events(run_dir)
    steps = summary["train_steps"]
    step_s = train_ev[-1]["elapsed_s"]
    tokens = train_ev[-1]["tokens"]
    if w == "classification":
        ev = {"eval_accuracy": eval_ev["accuracy"], "eval_loss": eval_ev["eval_loss"]}
    else:
        ev = {"eval_accuracy": eval_ev["token_accuracy"], "eval_loss": eval_ev["eval_loss"]}
    return common_done(
        {
            "side": "lmtune",
            "steps": steps,
            "samples": summary["train_samples"],
            "tokens": tokens,
            "step_s": step_s,
            "samples_per_s": summary["train_samples"] / step_s,
            "tokens_per_s": tokens / step_s,
            "final_loss": final_loss([(e["step"], e["loss"]) for e in train_ev], steps),
            "eval_s": round(eval_ev["time"] - train_ev[-1]["time"], 2),
            **ev,
            "train_call_s": summary["train_runtime_s"],
            "settings": spec.get("lmtune_set", []),
        },
        t_proc,
    )


# ----------------------------------------------------------------------------- parent

COLUMNS = [
    ("workload", "workload", "{}"),
    ("prec", "precision", "{}"),
    ("side", "side", "{}"),
    ("samples/s", "samples_per_s", "{:.1f}"),
    ("tokens/s", "tokens_per_s", "{:,.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:,.0f}"),
    ("final loss", "final_loss", "{:.4f}"),
    ("eval acc", "eval_accuracy", "{:.4f}"),
    ("eval loss", "eval_loss", "{:.4f}"),
    ("steps", "steps", "{}"),
    ("step s", "step_s", "{:.1f}"),
    ("all runs step s", "time_all", "{}"),
    ("eval s", "eval_s", "{:.1f}"),
    ("e2e s", "e2e_s", "{:.1f}"),
    ("cpu util", "cpu_util", "{:.2f}"),
]


def ratio_line(lm: dict[str, Any], hf: dict[str, Any]) -> str:
    return (
        f"ratio lmtune/HF {lm['workload']} {lm['precision']}: samples/s {lm['samples_per_s'] / hf['samples_per_s']:.2f}x, "
        f"tokens/s {lm['tokens_per_s'] / hf['tokens_per_s']:.2f}x, peak RSS {lm['peak_rss_mb'] / hf['peak_rss_mb']:.2f}x, "
        f"final loss {lm['final_loss']:.4f} vs {hf['final_loss']:.4f}, "
        f"eval acc {lm['eval_accuracy']:.4f} vs {hf['eval_accuracy']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        child_main(argv, {"lmtune": child_lmtune, "hf": child_hf})
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workload", choices=["classification", "sft", "all"], default="all")
    ap.add_argument(
        "--rows",
        type=int,
        default=None,
        help="training rows (default 4000 classification, 896 sft)",
    )
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument(
        "--hf-optim", default="adamw_torch_fused", help="HF optim name (default: its fused AdamW)"
    )
    ap.add_argument(
        "--hf-pad-multiple", type=int, default=None, help="HF collator pad_to_multiple_of"
    )
    add_common_args(ap, "lmtune,hf", "bench")
    a = ap.parse_args(argv)

    load_before = os.getloadavg()
    data_dir = Path(a.data_dir).resolve()
    if (
        not (data_dir / "sst2" / "train.tsv").is_file()
        or not (data_dir / "instruct_alpaca_1k").is_dir()
    ):
        print(
            f"bench_train: data folder {data_dir} not found (needs sst2/ and instruct_alpaca_1k/); "
            "pass --data-dir PATH to the shared data (../shared/data beside the repo)",
            file=sys.stderr,
        )
        return 2
    workloads = ["classification", "sft"] if a.workload == "all" else [a.workload]
    precisions = (
        (["fp32"] if a.quick else ["fp32", "bf16"]) if a.precision == "both" else [a.precision]
    )
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    env = child_env(a.threads)
    results: list[dict[str, Any]] = []
    ratios: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lmtune-bench-") as tmp:
        work = Path(a.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for w in workloads:
            base = dict(WORKLOADS[w], **(QUICK[w] if a.quick else {}))
            rows = a.rows or base["rows"]
            prep = prepare_classification if w == "classification" else prepare_sft
            data = prep(data_dir, work, rows, base["eval_rows"])
            for prec in precisions:
                spec = {
                    "workload": w,
                    "precision": prec,
                    "data": data,
                    "work": str(work),
                    "threads": a.threads,
                    "batch_size": base["batch_size"],
                    "lr": base["lr"],
                    "max_length": base["max_length"],
                    "log_every": a.log_every or (1 if a.quick else 5),
                    "lmtune_set": a.lmtune_set,
                    "hf_optim": a.hf_optim,
                    "hf_pad_multiple": a.hf_pad_multiple,
                }
                pair = run_sides(__file__, spec, sides, a.repeat, work, env, f"{w} {prec}")
                if pair is None:
                    return 1
                for r in pair.values():
                    r.update(
                        workload=w,
                        precision=prec,
                        train_rows=data["n_train"],
                        eval_rows=data["n_eval"],
                    )
                    results.append(r)
                if "lmtune" in pair and "hf" in pair:
                    ratios.append(ratio_line(pair["lmtune"], pair["hf"]))
    finish(argv, "bench_train.py", a, load_before, results, ratios, COLUMNS, "bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
