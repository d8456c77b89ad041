"""The `lmtune` command: one dispatch table of subcommands; each only wires library calls.

User errors (bad config, missing file, bad data, incompatible model/task) print one
paragraph and exit with code 2. Anything else is a bug: a short message, exit 1, and the
traceback with --debug. `lmtune pipeline` exits 3 when its release gate refuses the model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmtune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pre-trained language models: prepare, train, eval, score, feedback, export, pipeline.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. train.lr=1e-4")
]


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for internal errors.")
    ] = False,
) -> None:
    # Declared here so typer accepts it and --help lists it; main() reads it from argv,
    # because it catches errors outside typer's call.
    del debug


@config_app.command("show")
def config_show(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML); omit for the defaults.")
    ] = None,
    overrides: Overrides = None,
    fields: Annotated[
        bool, typer.Option("--fields", help="List every key with its default and meaning.")
    ] = False,
) -> None:
    """Print the resolved config (file + overrides + defaults)."""
    from lmtune.config import describe_fields, dump_config, load_config

    if fields:
        table = Table("key", "default", "description")
        for key, default, desc in describe_fields():
            table.add_row(key, default, desc)
        console.print(table)
        return
    print(dump_config(load_config(config, overrides or [])), end="")


@app.command()
def prepare(config: ConfigArg, overrides: Overrides = None) -> None:
    """Load, validate, clean and split the data; write splits and data_report.json/.md."""
    from lmtune.config import dump_config, load_config
    from lmtune.data.pipeline import prepare_data
    from lmtune.models.load import load_tokenizer
    from lmtune.train.run import text_length_fn

    cfg = load_config(config, overrides or [])
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    tok = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, out, length_fn=text_length_fn(tok))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
    console.print(f"format {prepared.format}; {sizes}")
    console.print(f"report: {out / 'data_report.md'}")


def _launch_workers(nproc: int) -> None:
    """Re-run this command under torchrun with `nproc` processes (CPU: gloo, GPU: nccl)."""
    import subprocess

    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lmtune",
        *cleaned,
    ]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def train(
    config: ConfigArg,
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint.")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", help="Processes to train with (launches torchrun).")
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a model as the config says; the run folder gets everything."""
    from lmtune.config import load_config
    from lmtune.train.dist import Dist
    from lmtune.train.run import run_training

    cfg = load_config(config, overrides or [])  # validate before spawning workers
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_workers(nproc)
    try:
        summary = run_training(cfg, resume=resume, quiet=quiet)
    finally:
        Dist.get().close()
    if Dist.get().is_main:
        _print_summary(summary)
        if summary.get("baselines"):
            _print_baselines(summary["baselines"])


def _print_summary(summary: dict) -> None:
    table = Table("figure", "value", title="run summary")
    keys = [
        "train_runtime_s",
        "train_samples_per_s",
        "train_tokens_per_s",
        "peak_rss_mb",
        "final_train_loss",
        "best_metric",
        "best_metric_value",
        "best_step",
        "model_dir",
    ]
    for k in keys:
        if summary.get(k) is not None:
            v = summary[k]
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in (summary.get("test") or {}).items():
        table.add_row(f"test {k}", f"{v:.4f}")
    console.print(table)


@app.command()
def tune(
    config: ConfigArg,
    overrides: Overrides = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the search in OUTPUT_DIR/study.db (finished trials are kept).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Search hyperparameters (the config's search: block); each trial is a run folder."""
    from lmtune.config import load_config
    from lmtune.search.hpo import run_search

    run_search(load_config(config, overrides or []), resume=resume, quiet=quiet)


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model folder.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled file to evaluate on.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default RUN/eval).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    baselines: Annotated[
        bool,
        typer.Option(
            "--baselines",
            help="Also score the base model zero-shot and few-shot on the same rows (baselines.json).",
        ),
    ] = False,
    shots: Annotated[
        int | None,
        typer.Option(
            "--shots",
            min=1,
            help="Few-shot examples per class (default: the run's baselines.shots).",
        ),
    ] = None,
) -> None:
    """Evaluate a trained model on a labelled file; writes eval.json (and baselines.json)."""
    from lmtune.evaluate.run import run_eval

    result = run_eval(model, data, out, batch_size, baselines=baselines, shots=shots)
    table = Table("metric", "value")
    for k, v in result.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"written: {Path(result['out_dir']) / 'eval.json'}")
    if (Path(result["out_dir"]) / "report.html").is_file():
        console.print(f"written: {Path(result['out_dir']) / 'report.html'}")
    if result.get("baselines"):
        _print_baselines(result["baselines"])
        console.print(f"written: {Path(result['out_dir']) / 'baselines.json'}")


def _print_baselines(report: dict) -> None:
    from lmtune.evaluate.baselines import baselines_table

    console.print(baselines_table(report))
    for note in report.get("notes") or []:
        console.print(f"note: {note}", highlight=False)


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Run folder or model folder (classifier or qa).")],
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="Texts: .txt one per line, or jsonl/csv with a text column; qa: SQuAD JSON or rows with context and question.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write predictions as jsonl here.")
    ] = None,
) -> None:
    """Label a file of texts with a trained classifier, or answer its questions (task qa)."""
    from lmtune.evaluate.run import run_predict

    preds = run_predict(model, input, out)
    if out is None:
        for p in preds:
            print(json.dumps(p, ensure_ascii=False))
    else:
        console.print(f"{len(preds)} predictions written to {out}")


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="Run folder or model folder (causal LM).")],
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="File of prompts (.txt lines or jsonl 'text').")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Complete prompts with a fine-tuned causal LM (stops at the end-of-sequence token)."""
    from lmtune.evaluate.run import read_texts, run_generate

    texts = list(prompt or [])
    if prompts is not None:
        texts += [r["text"] for r in read_texts(prompts)]
    if not texts:
        raise UserError("give at least one --prompt TEXT or --prompts FILE")
    for p, completion in zip(
        texts, run_generate(model, texts, max_new_tokens, temperature, top_p, seed), strict=True
    ):
        print(json.dumps({"prompt": p, "completion": completion}, ensure_ascii=False))


@app.command()
def feedback(
    model: Annotated[
        str, typer.Option("--model", help="Run or model folder (causal LM), or a hub id.")
    ],
    prompts: Annotated[
        Path, typer.Option("--prompts", help="Prompts: .txt lines, or jsonl/csv with 'prompt'.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Preferences jsonl (appended; resumed when it exists).")
    ],
    samples_per_prompt: Annotated[
        int,
        typer.Option(
            "--samples-per-prompt",
            help="Completions sampled; the first two different ones are shown.",
        ),
    ] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature (> 0).")
    ] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Compare two sampled completions per prompt in the terminal; every answer is saved."""
    from lmtune.feedback import run_feedback

    run_feedback(model, prompts, out, samples_per_prompt, max_new_tokens, temperature, top_p, seed)


@app.command()
def score(
    model: Annotated[Path, typer.Argument(help="Reward-model run folder or model folder.")],
    input: Annotated[
        Path,
        typer.Option(
            "--input", help="jsonl/csv rows: prompt + response, or prompt + chosen + rejected."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write scored rows as jsonl here (default: print them)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
) -> None:
    """Score responses with a trained reward model (pairs also get their margin)."""
    from lmtune.evaluate.score import run_score

    rows, summary = run_score(model, input, out, batch_size)
    if out is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    shown = ", ".join(
        f"{k} {v:.4f}" if k not in ("rows", "pairs") else f"{k} {int(v)}"
        for k, v in summary.items()
    )
    (err_console if out is None else console).print(
        shown + (f"; written to {out}" if out else ""), highlight=False
    )


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder or model folder.")],
    out: Annotated[Path, typer.Argument(help="Folder for the standalone merged model.")],
) -> None:
    """Merge LoRA/DoRA into a standalone model that plain transformers loads."""
    from lmtune.evaluate.run import resolve_model_dir
    from lmtune.models.export import export_merged

    path = export_merged(resolve_model_dir(run), out)
    console.print(f"exported to {path}")


@app.command()
def report(
    folder: Annotated[
        Path, typer.Argument(help="Run folder (lmtune train) or eval folder (lmtune eval --out).")
    ],
) -> None:
    """Rebuild report.html (plots embedded) and, for a run, MODEL_CARD.md from the folder's files."""
    from lmtune.report import rebuild

    for path in rebuild(folder):
        console.print(f"written: {path}")


@app.command()
def audit(
    model: Annotated[str, typer.Argument(help="Run folder, model folder, hub id or builtin:NAME.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Texts for counterfactual probes (default: the run's eval split)."
        ),
    ] = None,
    crows: Annotated[
        Path | None,
        typer.Option("--crows", help="CrowS-Pairs CSV (crows_pairs_anonymized.csv) or its folder."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default RUN/audit, else ./audit).")
    ] = None,
    max_pairs: Annotated[
        int | None, typer.Option("--max-pairs", help="Score a seeded sample of this many pairs.")
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before", help="Model or run to compare with (default: a causal run's base model)."
        ),
    ] = None,
) -> None:
    """Bias audit: CrowS-Pairs for masked/causal LMs, counterfactual term swaps for classifiers."""
    from lmtune.evaluate.audit import print_audit, run_audit

    result = run_audit(model, data, crows, out, max_pairs, before)
    print_audit(result, console)
    console.print(f"written: {Path(result['out_dir']) / 'audit.json'}")


@app.command()
def serve(
    model: Annotated[
        Path,
        typer.Argument(help="Run folder, model folder, or model registry (its `current` version)."),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port (0 = any free port; the URL is printed).")
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LMTUNE_API_KEY",
            show_default=False,
            help="Require 'Authorization: Bearer KEY' (all but /health).",
        ),
    ] = None,
    max_request_bytes: Annotated[
        int, typer.Option("--max-request-bytes", help="Larger bodies get 413.")
    ] = 1_000_000,
    max_tokens_cap: Annotated[
        int, typer.Option("--max-tokens-cap", help="Largest max_tokens a request may ask.")
    ] = 512,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Most inputs (classify) or prompts per request.")
    ] = 32,
    log_predictions: Annotated[
        Path | None,
        typer.Option("--log-predictions", help="Append every prediction to this jsonl."),
    ] = None,
) -> None:
    """Serve a model over HTTP: OpenAI-style completions/chat, or /v1/classify; /health, /metrics."""
    from lmtune.ops.serve import ServeSettings, run_server

    run_server(
        model,
        ServeSettings(
            host=host,
            port=port,
            api_key=api_key or None,
            max_request_bytes=max_request_bytes,
            max_tokens_cap=max_tokens_cap,
            max_batch=max_batch,
            log_predictions=log_predictions,
        ),
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/demo"),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Fine-tune builtin:minilm with LoRA on the bundled reviews and show before/after."""
    from lmtune.demo import run_demo

    run_demo(out, quiet=quiet)


@app.command()
def pipeline(
    config: ConfigArg,
    overrides: Overrides = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress bar and no run summary table.")
    ] = False,
) -> None:
    """Train, test on held-out data, gate (config gate:), release into the registry; exit 3 when refused."""
    from lmtune.config import load_config
    from lmtune.ops.pipeline import print_decision, run_pipeline
    from lmtune.train.dist import Dist

    cfg = load_config(config, overrides or [])
    try:
        result = run_pipeline(cfg, quiet=quiet)
    finally:
        Dist.get().close()
    if not quiet:
        _print_summary(result["summary"])
    print_decision(result["decision"], console)
    if result["released"]:
        console.print(
            f"released {result['version']}: {result['path']} (now current)", highlight=False
        )
        return
    console.print(
        f"refused: nothing released; see {Path(cfg.run.output_dir) / 'gate.md'}", highlight=False
    )
    sys.exit(3)  # typer.Exit's code is lost in main(); 3 = the gate refused (2 = user error)


registry_app = typer.Typer(
    no_args_is_help=True, help="The model registry `lmtune pipeline` releases into."
)
app.add_typer(registry_app, name="registry")
RegistryArg = Annotated[Path, typer.Argument(help="Registry folder (the config's gate.registry).")]


@registry_app.command("list")
def registry_list(registry: RegistryArg) -> None:
    """Every version with its release time and gate metric; * marks the current one."""
    from lmtune.ops.registry import registry_table

    console.print(registry_table(registry))


@registry_app.command("rollback")
def registry_rollback(
    registry: RegistryArg,
    version: Annotated[str, typer.Argument(help="Version to make current, e.g. v1.")],
) -> None:
    """Point current at VERSION (atomic, logged in releases.jsonl); restart `lmtune serve` to load it."""
    from lmtune.ops.registry import rollback

    previous = rollback(registry, version)
    console.print(f"current: {version} (was {previous or 'nothing'})", highlight=False)


monitor_app = typer.Typer(
    no_args_is_help=True, help="Post-release monitoring: record batches, check drift, report."
)
app.add_typer(monitor_app, name="monitor")
MonTarget = Annotated[
    Path, typer.Argument(help="Model folder, run folder, or registry (uses its current version).")
]
MonDb = Annotated[
    Path | None, typer.Option("--db", help="History database (default TARGET/monitor.db).")
]
MonNow = Annotated[
    str | None,
    typer.Option("--now", help="ISO time taken as now (default: $LMTUNE_NOW, else the clock)."),
]
MonConfig = Annotated[
    Path | None, typer.Option("--config", help="YAML whose monitor: block sets the thresholds.")
]
MonSet = Annotated[
    list[str] | None,
    typer.Option("--set", help="Threshold key=value, e.g. psi_threshold=0.1 (repeatable)."),
]


@monitor_app.command("record")
def monitor_record(
    target: MonTarget,
    data: Annotated[
        Path | None, typer.Option("--data", help="Labelled batch (jsonl/csv/tsv, like eval).")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help="Serving log (`lmtune serve --log-predictions`)."),
    ] = None,
    batch: Annotated[
        str | None, typer.Option("--name", help="Batch name (default: the file's stem).")
    ] = None,
    db: MonDb = None,
    now: MonNow = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
) -> None:
    """Score a labelled batch (or read a serving log) and append it to the monitoring history."""
    from lmtune.ops.monitor import record

    rec = record(target, data, predictions, db, batch, now, batch_size)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in rec["drift"].items() if isinstance(v, float))
    console.print(
        f"recorded '{rec['batch']}' ({rec['n']} rows) for {rec['model_version']}: {shown}",
        highlight=False,
    )


@monitor_app.command("status")
def monitor_status(
    target: MonTarget,
    db: MonDb = None,
    now: MonNow = None,
    config: MonConfig = None,
    sets: MonSet = None,
) -> None:
    """Print recent records and the checks; exit 1 when an alert fires (for cron or CI)."""
    from lmtune.ops.monitor import status

    sys.exit(status(target, db, now, config, sets, console))  # typer.Exit's code is lost in main()


@monitor_app.command("report")
def monitor_report(
    target: MonTarget,
    db: MonDb = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder (default: beside the database, monitor_report/)."),
    ] = None,
    now: MonNow = None,
    config: MonConfig = None,
    sets: MonSet = None,
) -> None:
    """Write report.html (metric, PSI and OOV over time) and monitor.json."""
    from lmtune.ops.monitor_report import report

    console.print(f"written: {report(target, db, out, now, config, sets) / 'report.html'}")


def _is_usage_error(exc: Exception) -> bool:
    """A command-line mistake (unknown option, missing argument) rather than a bug.

    typer >= 0.25 raises exceptions from its own vendored copy of click, so both classes count.
    """
    import click

    classes: list[type] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        classes.append(VendoredClickException)
    except ImportError:  # older typer uses click itself
        pass
    return isinstance(exc, tuple(classes))


def main() -> None:
    """Console-script entry point with the error policy described in the module docstring."""
    debug = "--debug" in sys.argv
    if not debug:
        # transformers' per-load reports and download bars drown lmtune's own output.
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        app(standalone_mode=False)
    except UserError as exc:
        # escape: messages quote config keys and extras in [brackets] that rich would eat as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: say so, keep the traceback behind --debug
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error[/] ({type(exc).__name__}): {escape(str(exc))}\n"
            "This is a bug in lmtune; rerun with --debug for the traceback and report it.",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
