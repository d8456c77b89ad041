"""What the side-by-side benchmarks share: data helpers, the tiny Llama, per-process
measurement, running each side in its own subprocess (best of N, alternating order), and the
result table.

Every side runs in a fresh subprocess so peak RSS (ru_maxrss) is that side's own, and the
table shows each side's fastest run: other work on the machine only ever slows a run down,
so the minimum is the least disturbed measurement.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from make_tiny_llama import save_tiny_llama  # noqa: E402,F401 - one model for benchmarks and examples

DEFAULT_DATA = REPO.parent / "shared" / "data"
OUT_DIR = REPO / "benchmarks" / "out"
SEED = 42


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines; returns path."""
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file."""
    return [
        json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line
    ]


def common_done(result: dict[str, Any], t_proc: float) -> dict[str, Any]:
    """Add this process's peak RSS, wall time since t_proc and CPU utilisation to result."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = round(
        rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1
    )
    wall = time.perf_counter() - t_proc
    result["e2e_s"] = round(wall, 2)
    # CPU seconds per wall second of the whole process: well below the thread count means
    # the side waited (for the other work on the machine, or in single-threaded Python).
    result["cpu_util"] = round(time.process_time() / wall, 2)
    return result


def final_loss(logged: list[tuple[int, float]], total_steps: int) -> float:
    """Mean of the logged losses whose window ends in the last 10% of the steps."""
    cut = total_steps - max(1, total_steps // 10)
    tail = [loss for step, loss in logged if step > cut] or [logged[-1][1]]
    return sum(tail) / len(tail)


def trainer_clock(marks: dict[str, float]) -> Any:
    """A transformers TrainerCallback that writes into `marks` when the optimizer steps start
    (t0) and end (t1), and when an evaluation ends (t_eval)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            marks["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step == state.max_steps:
                marks["t1"] = time.perf_counter()

        def on_evaluate(self, args, state, control, **kw):  # noqa: ANN001
            marks["t_eval"] = time.perf_counter()

    return Clock()


def trainer_args(spec: dict[str, Any], output_dir: Path, **extra: Any) -> dict[str, Any]:
    """The (TRL) TrainingArguments every HF side shares: one epoch on the CPU, linear schedule
    without warmup, clipping at 1.0, seeded, no dataloader workers (2 cores: a worker only
    competes with the compute threads); `extra` adds or overrides."""
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": spec["batch_size"],
        "per_device_eval_batch_size": 64,
        "num_train_epochs": 1,
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
        "seed": SEED,
        "data_seed": SEED,
        "use_cpu": True,
        "bf16": spec["precision"] == "bf16",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "logging_steps": spec["log_every"],
        "report_to": "none",
        **extra,
    }


def lmtune_events(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(train events, last eval event) of an lmtune run's metrics.jsonl."""
    events = read_jsonl(run_dir / "metrics.jsonl")
    return [e for e in events if e["event"] == "train"], [
        e for e in events if e["event"] == "eval"
    ][-1]


def child_main(
    argv: list[str], children: dict[str, Callable[[dict[str, Any], float], dict[str, Any]]]
) -> None:
    """Entry of a side's subprocess: read the spec, set torch threads, run, write the result."""
    import argparse

    t_proc = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=sorted(children), required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result", required=True)
    a = ap.parse_args(argv)
    spec = json.loads(Path(a.spec).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    result = children[a.child](spec, t_proc)
    result["threads"] = torch.get_num_threads()
    Path(a.result).write_text(json.dumps(result, indent=2))


def add_common_args(ap: Any, sides: str, out_prefix: str) -> None:
    """The options every side-by-side benchmark takes."""
    ap.add_argument("--quick", action="store_true", help="a few steps on a few rows: a smoke run")
    ap.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA),
        help="the shared data folder (default ../shared/data)",
    )
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides"
    )
    ap.add_argument("--sides", default=sides, help=f"comma list: {sides.replace(',', ', ')}")
    ap.add_argument(
        "--log-every", type=int, default=None, help="log the train loss every N steps (both sides)"
    )
    ap.add_argument(
        "--lmtune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for lmtune's side (lever experiments), repeatable",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per side (order alternating); the table shows each side's fastest",
    )
    ap.add_argument(
        "--work-dir", default=None, help="keep specs, logs and runs here (default: a temp dir)"
    )
    ap.add_argument(
        "--out",
        default=None,
        help=f"JSON result path (default benchmarks/out/{out_prefix}-<time>.json)",
    )


def child_env(threads: int) -> dict[str, str]:
    """The environment of a side's subprocess: the same thread count for both sides."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def run_sides(
    script: str,
    spec: dict[str, Any],
    sides: list[str],
    repeat: int,
    work: Path,
    env: dict[str, str],
    label: str,
    speed_key: str = "step_s",
) -> dict[str, dict[str, Any]] | None:
    """Run every side `repeat` times, back to back, one subprocess each, the order alternating
    between repeats (so neither side always runs first); returns each side's fastest run (by
    speed_key, seconds) with all runs' times beside it, or None when a side failed."""
    tag = label.replace(" ", "-")
    spec_path = work / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for rep in range(repeat):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            res_path = work / f"result-{tag}-{side}-{rep}.json"
            log_path = work / f"log-{tag}-{side}-{rep}.txt"
            print(f"[{label}] {side} (run {rep + 1}/{repeat}) ...", flush=True)
            with log_path.open("w") as log:
                rc = subprocess.run(
                    [
                        sys.executable,
                        script,
                        "--child",
                        side,
                        "--spec",
                        str(spec_path),
                        "--result",
                        str(res_path),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(work),
                ).returncode
            if rc != 0:
                print(log_path.read_text()[-4000:], file=sys.stderr)
                print(f"benchmark: the {side} side of {label} failed (exit {rc})", file=sys.stderr)
                return None
            runs[side].append(json.loads(res_path.read_text()))
    best: dict[str, dict[str, Any]] = {}
    for side, rs in runs.items():
        b = dict(min(rs, key=lambda r: r[speed_key]))
        b.update(runs=len(rs), time_all=[r[speed_key] for r in rs], all_runs=rs)
        best[side] = b
    return best


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A right-aligned text table; columns are (header, key, format); 'time_all' lists runs."""

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        if key == "time_all":
            return "/".join(f"{v:.1f}" for v in r.get(key, []))
        value = r.get(key)
        return "-" if value is None else fmt.format(value)

    head = [c[0] for c in columns]
    body = [[cell(r, key, fmt) for _, key, fmt in columns] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(wd) for c, wd in zip(cells, widths, strict=True))

    return "\n".join([line(head), line(["-" * wd for wd in widths])] + [line(b) for b in body])


def finish(
    argv: list[str],
    script: str,
    args: Any,
    load_before: tuple[float, ...],
    results: list[dict[str, Any]],
    ratios: list[str],
    columns: list[tuple[str, str, str]],
    prefix: str,
) -> Path:
    """Print the table and ratio lines; write meta + results + ratios as JSON (default
    benchmarks/out/PREFIX-<time>.json, or --out)."""
    import torch

    print()
    print(format_table(results, columns))
    print()
    for line in ratios:
        print(line)
    meta = {
        "command": " ".join([Path(sys.executable).name, f"benchmarks/{script}", *argv]),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": args.quick,
        "loadavg_before": load_before,
    }
    path = (
        Path(args.out) if args.out else OUT_DIR / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
    print(f"\nresults written to {path}")
    return path
