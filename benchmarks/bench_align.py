"""lmtune's preference tasks vs TRL's trainers, side by side: DPO vs `trl.DPOTrainer`, reward
modelling vs `trl.RewardTrainer`.

One run trains the same model on the same pairs with the same hyperparameters, (a) through
lmtune's public path (`run_training(Config)`, exactly what `lmtune train` runs) and (b) through
TRL 1.16, each side in its own subprocess (peak RSS is per side), back to back, with the same
torch thread count. It prints one table and a ratio line per workload and writes JSON to
benchmarks/out/.

Workloads (pairs from ../shared/data/hh_rlhf_harmless_base, HH-RLHF full dialogues: the
prompt is every turn before the last assistant turn)
  dpo     a random 4-layer hidden-128 Llama with the MiniLM WordPiece vocabulary (30,522
          tokens), full fine-tune, max_length 256, batch 16, 1 epoch, lr 5e-4, beta 0.1,
          sigmoid loss, 256 train + 64 held-out pairs.
  reward  builtin:minilm with a 1-output sequence-classification head (Bradley-Terry), full
          fine-tune, max_length 256, batch 16, 1 epoch, lr 3e-5, same pairs.

The same token ids on both sides. lmtune reads the HH-RLHF rows itself; the parent encodes the
same rows with lmtune's task (truncation: the prompt keeps its end, responses their start) and
hands TRL those ids (TRL's own tokenization step is bypassed; it is not timed on either side).
One difference remains for the reward workload: TRL's preference collator passes no
token_type_ids, so MiniLM sees the response as segment 0 there and as segment 1 in lmtune
(the text-pair encoding it was pre-trained on); speed is unaffected.

The reference model (dpo). Full fine-tuning needs reference log-probs of the initial model.
lmtune computes them once before training (cached in the run folder). TRL is run with its
fastest documented setting, precompute_ref_log_probs=True (--trl-ref model: its default, a
second copy of the model and one more forward per step). Pairs/s counts the reference pass:
pairs / (reference s + optimizer-step s) on both sides; 'step pairs/s' leaves it out.

What is measured
  pairs/s        training pairs / (reference time + wall time of the optimizer steps).
  final loss     mean of the logged train losses of the last 10% of the steps.
  held-out acc   dpo: reward accuracy (implicit reward of chosen > rejected) on the held-out
                 pairs; reward: pairwise accuracy. Both sides evaluate once, after the epoch.
  peak RSS       ru_maxrss of the side's own process.

Usage
  .venv/bin/python benchmarks/bench_align.py                       # both workloads, fp32
  .venv/bin/python benchmarks/bench_align.py --workload dpo --repeat 3
  .venv/bin/python benchmarks/bench_align.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    SEED,
    add_common_args,
    child_env,
    child_main,
    common_done,
    final_loss,
    finish,
    lmtune_events,
    read_jsonl,
    run_sides,
    save_tiny_llama,
    trainer_args,
    trainer_clock,
    write_jsonl,
)

HH = "hh_rlhf_harmless_base/test.jsonl"
WORKLOADS: dict[str, dict[str, Any]] = {
    "dpo": {"batch_size": 16, "lr": 5e-4, "max_length": 256, "pairs": 256, "eval_pairs": 64},
    "reward": {"batch_size": 16, "lr": 3e-5, "max_length": 256, "pairs": 256, "eval_pairs": 64},
}
QUICK = {"pairs": 32, "eval_pairs": 16}
BETA = 0.1


# ----------------------------------------------------------------------------- data prep


def lmtune_config(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The lmtune config of a workload (the same hyperparameters TRL gets)."""
    d = spec["data"]
    off = {
        "normalize": False,
        "control_chars": False,
        "dedupe": False,
        "pii": False,
        "secrets": False,
        "min_chars": 0,
    }
    cfg: dict[str, Any] = {
        "run": {"name": f"bench-{spec['workload']}", "output_dir": str(run_dir), "seed": SEED},
        "task": spec["workload"],
        # dropout 0: TRL's default (disable_dropout=True) for both trainers.
        "model": {"name_or_path": d["model"], "max_length": spec["max_length"], "dropout": 0.0},
        "adapter": {"type": "full"},
        "data": {
            "train": d["train"],
            "eval": d["eval"],
            "format": "dialogue_pair",
            "clean": off,
            "leakage": {"check": False},
        },
        "preference": {"loss": "sigmoid", "beta": BETA},
        "train": {
            "epochs": 1,
            "batch_size": spec["batch_size"],
            "eval_batch_size": 64,
            "lr": spec["lr"],
            "scheduler": "linear",
            "warmup_steps": 0,
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "precision": spec["precision"],
            "log_every": spec["log_every"],
            "eval_before": False,
        },
    }
    from lmtune.config import apply_overrides

    return apply_overrides(cfg, spec.get("lmtune_set", []))


def encode_pairs(spec: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """lmtune's features of the rows of path (what lmtune will train on), for TRL."""
    from lmtune.config import Config
    from lmtune.data.pipeline import read_rows
    from lmtune.models.load import load_tokenizer
    from lmtune.tasks import build_task

    cfg = Config.model_validate(lmtune_config(spec, Path(spec["work"]) / "unused"))
    tok = load_tokenizer(cfg.model, for_training=True)
    task = build_task(cfg.task, tok, cfg)
    rows, _ = read_rows(path, cfg)
    feats = []
    for row in rows:
        try:
            feats.append({**task.encode(row), "_source": row["_source"]})
        except ValueError:
            continue  # lmtune rejects it at tokenization: TRL does not see it either
    return feats


def prepare(
    data_dir: Path, work: Path, workload: str, pairs: int, eval_pairs: int, spec: dict[str, Any]
) -> dict[str, Any]:
    """HH-RLHF subsets whose every row lmtune keeps (so both sides train on `pairs` pairs:
    whole batches, the same number of optimizer updates) + the model folder."""
    from lmtune.models.load import resolve_model_path

    if workload == "dpo":
        model = str(save_tiny_llama(work / "tiny-llama"))
    else:
        model = resolve_model_path("builtin:minilm")
    raw = read_jsonl(data_dir / HH)[: 2 * (pairs + eval_pairs)]
    probe = write_jsonl(work / f"{workload}_probe.jsonl", raw)
    probe_spec = {**spec, "data": {"model": model, "train": str(probe), "eval": str(probe)}}
    # The raw rows that lmtune reads AND encodes without rejecting (by their line number).
    lines = sorted(
        int(f["_source"].rsplit(":", 1)[1]) for f in encode_pairs(probe_spec, str(probe))
    )
    if len(lines) < pairs + eval_pairs:
        raise SystemExit(
            f"bench_align: only {len(lines)} usable pairs in the first {len(raw)} rows"
        )
    keep = [raw[i - 1] for i in lines[: pairs + eval_pairs]]
    train = write_jsonl(work / f"{workload}_train.jsonl", keep[:pairs])
    held = write_jsonl(work / f"{workload}_eval.jsonl", keep[pairs:])
    return {
        "model": model,
        "train": str(train),
        "eval": str(held),
        "n_train": pairs,
        "n_eval": len(keep) - pairs,
    }


# ----------------------------------------------------------------------------- children


def child_lmtune(spec: dict[str, Any], t_proc: float) -> dict[str, Any]:
    """lmtune through run_training, exactly as `lmtune train` runs it; the reference pass is timed."""
    from lmtune.config import Config
    from lmtune.tasks.dpo import DPOTask
    from lmtune.train.run import run_training

    ref_s = [0.0]
    original = DPOTask.prepare_reference

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        original(self, *args, **kwargs)
        ref_s[0] += time.perf_counter() - t

    DPOTask.prepare_reference = timed  # type: ignore[method-assign]
    run_dir = Path(spec["work"]) / f"lmtune-{spec['workload']}"
    summary = run_training(Config.model_validate(lmtune_config(spec, run_dir)), quiet=False)
    train_ev, eval_ev = lmtune_events(run_dir)
    steps, step_s = summary["train_steps"], train_ev[-1]["elapsed_s"]
    pairs = summary["train_samples"]
    acc = eval_ev["reward_accuracy" if spec["workload"] == "dpo" else "pairwise_accuracy"]
    return common_done(
        {
            "side": "lmtune",
            "steps": steps,
            "pairs": pairs,
            "step_s": step_s,
            "ref_s": round(ref_s[0], 2),
            "time_s": step_s + ref_s[0],
            "final_loss": final_loss([(e["step"], e["loss"]) for e in train_ev], steps),
            "eval_accuracy": acc,
            "eval_loss": eval_ev["eval_loss"],
        },
        t_proc,
    )


def child_trl(spec: dict[str, Any], t_proc: float) -> dict[str, Any]:
    """TRL's DPOTrainer / RewardTrainer on lmtune's token ids, its fastest fair settings."""
    import datasets
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers import set_seed as hf_set_seed

    w, d = spec["workload"], spec["data"]
    hf_set_seed(SEED)
    tok = AutoTokenizer.from_pretrained(d["model"])
    feats, held = encode_pairs(spec, d["train"]), encode_pairs(spec, d["eval"])
    marks: dict[str, float] = {"ref_s": 0.0}

    common = trainer_args(
        spec,
        Path(spec["work"]) / f"trl-{w}",
        weight_decay=0.0,
        optim="adamw_torch_fused",
        eval_strategy="no",
        save_strategy="no",
        max_length=spec["max_length"],
    )
    if w == "dpo":
        from trl import DPOConfig, DPOTrainer

        # The ids are lmtune's (see the module docstring): skip TRL's tokenization map.
        DPOTrainer._prepare_dataset = lambda self, dataset, *a, **k: dataset  # type: ignore[method-assign]
        original = DPOTrainer._precompute_ref_logps

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = original(self, *args, **kwargs)
            marks["ref_s"] += time.perf_counter() - t
            return out

        DPOTrainer._precompute_ref_logps = timed  # type: ignore[method-assign]
        cols = ("prompt_ids", "chosen_ids", "rejected_ids")
        train_ds = datasets.Dataset.from_list([{k: f[k] for k in cols} for f in feats])
        eval_ds = datasets.Dataset.from_list([{k: f[k] for k in cols} for f in held])
        args = DPOConfig(
            **common,
            beta=BETA,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=spec["trl_ref"] == "precompute",
        )
        model = AutoModelForCausalLM.from_pretrained(
            d["model"], dtype=torch.float32, use_safetensors=True
        )
        trainer: Any = DPOTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tok,
            callbacks=[trainer_clock(marks)],
        )
        acc_key = "eval_rewards/accuracies"
    else:
        from trl import RewardConfig, RewardTrainer

        def ids(fs: list[dict[str, Any]]) -> Any:
            return datasets.Dataset.from_list(
                [
                    {"chosen_ids": f["chosen_input_ids"], "rejected_ids": f["rejected_input_ids"]}
                    for f in fs
                ]
            )

        hf_set_seed(SEED)  # the head's init draws from the same RNG state as on lmtune's side
        model = AutoModelForSequenceClassification.from_pretrained(
            d["model"],
            dtype=torch.float32,
            num_labels=1,
            ignore_mismatched_sizes=True,
            use_safetensors=True,
        )
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(**common)
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=ids(feats),
            eval_dataset=ids(held),
            processing_class=tok,
            callbacks=[trainer_clock(marks)],
        )
        acc_key = "eval_accuracy"
    out = trainer.train()
    ev = trainer.evaluate()
    steps = out.global_step
    logged = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    step_s = marks["t1"] - marks["t0"]
    return common_done(
        {
            "side": "trl",
            "steps": steps,
            "pairs": steps * spec["batch_size"],
            "step_s": round(step_s, 3),
            "ref_s": round(marks["ref_s"], 2),
            "time_s": step_s + marks["ref_s"],
            "final_loss": final_loss(logged, steps),
            "eval_accuracy": ev[acc_key],
            "eval_loss": ev["eval_loss"],
            "settings": {
                "precompute_ref_log_probs": spec["trl_ref"] == "precompute",
                "optim": "adamw_torch_fused",
            },
        },
        t_proc,
    )


# ----------------------------------------------------------------------------- parent

COLUMNS = [
    ("workload", "workload", "{}"),
    ("side", "side", "{}"),
    ("pairs/s", "pairs_per_s", "{:.2f}"),
    ("step pairs/s", "step_pairs_per_s", "{:.2f}"),
    ("peak RSS MB", "peak_rss_mb", "{:,.0f}"),
    ("final loss", "final_loss", "{:.4f}"),
    ("held-out acc", "eval_accuracy", "{:.4f}"),
    ("eval loss", "eval_loss", "{:.4f}"),
    ("steps", "steps", "{}"),
    ("ref s", "ref_s", "{:.1f}"),
    ("step s", "step_s", "{:.1f}"),
    ("all runs s", "time_all", "{}"),
    ("e2e s", "e2e_s", "{:.1f}"),
    ("cpu util", "cpu_util", "{:.2f}"),
]


def ratio_line(lm: dict[str, Any], trl: dict[str, Any]) -> str:
    """One line: lmtune/TRL speed and memory ratios, and both sides' loss and accuracy."""
    return (
        f"ratio lmtune/TRL {lm['workload']}: pairs/s {lm['pairs_per_s'] / trl['pairs_per_s']:.2f}x "
        f"(steps only {lm['step_pairs_per_s'] / trl['step_pairs_per_s']:.2f}x), "
        f"peak RSS {lm['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x, "
        f"final loss {lm['final_loss']:.4f} vs {trl['final_loss']:.4f}, "
        f"held-out acc {lm['eval_accuracy']:.4f} vs {trl['eval_accuracy']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prepare data, run both sides per workload, print and save the results."""
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        child_main(argv, {"lmtune": child_lmtune, "trl": child_trl})
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workload", choices=["dpo", "reward", "all"], default="all")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs (default 256)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument(
        "--trl-ref",
        choices=["precompute", "model"],
        default="precompute",
        help="TRL DPO reference: precomputed log-probs (its fastest) or a reference model per step",
    )
    add_common_args(ap, "lmtune,trl", "align")
    a = ap.parse_args(argv)

    load_before = os.getloadavg()
    data_dir = Path(a.data_dir).resolve()
    if not (data_dir / HH).is_file():
        print(
            f"bench_align: {data_dir / HH} not found; pass --data-dir PATH to the shared data "
            "(../shared/data beside the repo)",
            file=sys.stderr,
        )
        return 2
    workloads = ["dpo", "reward"] if a.workload == "all" else [a.workload]
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    results: list[dict[str, Any]] = []
    ratios: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lmtune-bench-") as tmp:
        work = Path(a.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for w in workloads:
            base = dict(WORKLOADS[w], **(QUICK if a.quick else {}))
            spec: dict[str, Any] = {
                "workload": w,
                "precision": a.precision,
                "work": str(work),
                "threads": a.threads,
                "batch_size": base["batch_size"] if not a.quick else 8,
                "lr": base["lr"],
                "max_length": base["max_length"],
                "log_every": a.log_every or (1 if a.quick else 2),
                "lmtune_set": a.lmtune_set,
                "trl_ref": a.trl_ref,
            }
            pairs = a.pairs or base["pairs"]
            print(f"[{w}] preparing {pairs} + {base['eval_pairs']} pairs ...", flush=True)
            spec["data"] = prepare(data_dir, work, w, pairs, base["eval_pairs"], spec)
            pair = run_sides(
                __file__, spec, sides, a.repeat, work, child_env(a.threads), w, speed_key="time_s"
            )
            if pair is None:
                return 1
            for r in pair.values():
                r.update(
                    workload=w,
                    precision=a.precision,
                    train_pairs=spec["data"]["n_train"],
                    eval_pairs=spec["data"]["n_eval"],
                    pairs_per_s=r["pairs"] / r["time_s"],
                    step_pairs_per_s=r["pairs"] / r["step_s"],
                )
                results.append(r)
            if "lmtune" in pair and "trl" in pair:
                ratios.append(ratio_line(pair["lmtune"], pair["trl"]))
    finish(argv, "bench_align.py", a, load_before, results, ratios, COLUMNS, "align")
    return 0


if __name__ == "__main__":
    sys.exit(main())
