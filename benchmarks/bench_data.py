"""lmtune's data path at scale vs plain `datasets`, and a second run from the data cache.

On N synthetic instruction rows (a 10-40-word instruction, a 30-150-word output; N = 1M by
default) with one tokenizer (the MiniLM WordPiece vocabulary, 30,522 tokens, on a random
4-layer Llama: examples/make_tiny_llama.py), three timed commands, each in its own process
tree, back to back:

  plain    datasets.load_dataset("json") + .map(tokenize, batched=True, num_proc=2): the
           tokenization a user would write by hand (instruction + output, truncation to
           max_length), nothing else. Time from process start to the end of map().
  first    `lmtune train` (SFT, LoRA, alpaca template, max_length 256, data.num_proc 2, the
           default cleaning: normalisation, PII redaction, exact dedupe, split, leakage),
           cold cache: time from the command to the first optimizer step (its metrics.jsonl
           event). The process is stopped there.
  second   the same command again: a data cache hit. Time to the first optimizer step.

Memory, sampled every 0.1 s from /proc via psutil over the process and all its children
(datasets' map workers and its queue manager included), three ways:
  RSS sum      the largest sum of their resident sizes. An upper bound: a forked worker's
               pages shared with its parent count once per process.
  PSS sum      the largest sum of their proportional sizes (a shared page split between the
               processes that map it): what the tree holds.
  1 process    the largest resident size of any one process: what GNU time's "Maximum
               resident set size" reports for the command.
Targets (issue 14): first within 2x of plain; peak RSS under 3 GB; second under 15 s.

Usage
  .venv/bin/python benchmarks/bench_data.py                 # 1,000,000 rows
  .venv/bin/python benchmarks/bench_data.py --rows 200000
  .venv/bin/python benchmarks/bench_data.py --rows 2000 --out /tmp/b.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
MAX_LENGTH = 256

PLAIN = r"""
import sys, time
t0 = float(sys.argv[3])
import datasets
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[2])
def tokenize(batch):
    texts = [i + "\n" + o for i, o in zip(batch["instruction"], batch["output"])]
    return tok(texts, truncation=True, max_length=MAXLEN)
ds = datasets.load_dataset("json", data_files=sys.argv[1], split="train")
ds = ds.map(tokenize, batched=True, num_proc=2, remove_columns=ds.column_names)
print("ROWS", len(ds), "SECONDS", time.time() - t0)
""".replace("MAXLEN", str(MAX_LENGTH))


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    """n instruction rows: 10-40-word instructions, 30-150-word outputs, from 5,000 words."""
    rng = random.Random(seed)
    words = [f"w{chr(97 + i % 26)}{i}" for i in range(5000)]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            ins = " ".join(rng.choices(words, k=rng.randint(10, 40)))
            out = " ".join(rng.choices(words, k=rng.randint(30, 150)))
            f.write(json.dumps({"instruction": f"{ins} ({i})", "output": out}) + "\n")


def tree_memory(proc: Any) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, largest single RSS) in bytes over a psutil.Process and all
    its descendants (zeros once gone)."""
    import psutil

    rss = pss = top = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()  # PSS from /proc/PID/smaps_rollup
        except psutil.Error:
            continue
        rss, pss, top = rss + info.rss, pss + info.pss, max(top, info.rss)
    return rss, pss, top


def run_timed(cmd: list[str], env: dict[str, str], until: Any = None) -> dict[str, Any]:
    """Run cmd; seconds until `until()` is true (else until it exits) and peak memory."""
    import psutil

    # The output goes to a file: a pipe read only at the end fills up (64 KiB of progress bars
    # at 1M rows) and blocks the command mid-run, with the clock still going.
    log = tempfile.TemporaryFile()
    t0 = time.time()
    popen = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc, done_at = psutil.Process(popen.pid), None
    peak, peak_at, peak_pss, peak_one = 0, 0.0, 0, 0
    while popen.poll() is None:
        rss, pss, one = tree_memory(proc)
        if rss > peak:  # when the peak came says which stage it belongs to
            peak, peak_at = rss, time.time() - t0
        peak_pss, peak_one = max(peak_pss, pss), max(peak_one, one)
        if until is not None and until():
            done_at = time.time() - t0
            for p in proc.children(recursive=True):
                p.kill()
            popen.kill()
            break
        time.sleep(0.1)
    popen.wait()
    log.seek(0)
    out = log.read().decode(errors="replace")
    log.close()
    if done_at is None:
        if popen.returncode != 0 or until is not None:
            raise SystemExit(f"bench_data: {' '.join(cmd[:4])} failed:\n{out[-4000:]}")
        done_at = time.time() - t0
    return {
        "seconds": round(done_at, 1),
        "peak_rss_gb": round(peak / 2**30, 2),
        "peak_at_s": round(peak_at, 1),
        "peak_pss_gb": round(peak_pss / 2**30, 2),
        "peak_process_rss_gb": round(peak_one / 2**30, 2),
        "log": out,
    }


def first_step(run_dir: Path) -> Any:
    """A predicate: metrics.jsonl of run_dir holds a train event (the first optimizer step)."""

    def check() -> bool:
        log = run_dir / "metrics.jsonl"
        return log.is_file() and '"event": "train"' in log.read_text(errors="replace")

    return check


def write_config(work: Path, model: Path, data: Path, run: str) -> Path:
    import yaml

    cfg = {
        "task": "sft",
        "run": {"output_dir": str(work / run), "seed": 0},
        "model": {"name_or_path": str(model), "max_length": MAX_LENGTH},
        "adapter": {"type": "lora"},
        "data": {"train": str(data), "format": "instruction", "template": "alpaca", "num_proc": 2},
        "train": {"max_steps": 5, "batch_size": 8, "eval_before": False, "log_every": 1},
    }
    path = work / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bench_data.json"))
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    from make_tiny_llama import save_tiny_llama

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "rows.jsonl"
    write_rows(data, args.rows)
    model = save_tiny_llama(work / "tiny-llama")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "LMTUNE_CACHE_DIR": str(work / "lmtune-cache"),
        "HF_DATASETS_CACHE": str(work / "hf-cache"),  # a cold datasets cache for `plain`
        "TOKENIZERS_PARALLELISM": "false",
    }
    py = sys.executable
    results: dict[str, Any] = {"rows": args.rows, "bytes": data.stat().st_size}
    script = work / "plain.py"
    script.write_text(PLAIN)
    results["plain"] = run_timed([py, str(script), str(data), str(model), str(time.time())], env)
    for run in ("first", "second"):
        cfg = write_config(work, model, data, run)
        cmd = [py, "-m", "lmtune", "train", str(cfg)]
        results[run] = run_timed(cmd, env, until=first_step(work / run))
    logs = {k: results[k].pop("log") for k in ("plain", "first", "second")}
    ratio = results["first"]["seconds"] / results["plain"]["seconds"]
    results["first_over_plain"] = round(ratio, 2)
    results["cache_hit_line"] = "data cache hit" in logs["second"]
    print(f"{args.rows:,} rows ({results['bytes'] / 2**20:.0f} MiB of JSON lines)")
    heads = ("seconds", "RSS sum GB", "at s", "PSS sum GB", "1 process GB")
    print(f"{'':8}" + "".join(f"{h:>13}" for h in heads))
    for k in ("plain", "first", "second"):
        r = results[k]
        keys = ("seconds", "peak_rss_gb", "peak_at_s", "peak_pss_gb", "peak_process_rss_gb")
        print(f"{k:8}" + "".join(f"{r[c]:>13}" for c in keys))
    print(f"ratio first/plain {ratio:.2f}; second run cache hit: {results['cache_hit_line']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
