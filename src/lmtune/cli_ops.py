"""`lmtune serve`, `lmtune pipeline` and the `registry` and `monitor` command groups: the life of
a model after training. cli.py registers them; each only wires library calls (imported lazily,
so `lmtune --help` loads neither torch nor transformers).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lmtune.cli_common import ConfigArg, Overrides, console, load_noted, print_summary


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
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests queued or running; more get 429.")
    ] = 64,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", help="Seconds per request; then 504.")
    ] = 300.0,
    default_max_tokens: Annotated[
        int, typer.Option("--default-max-tokens", help="Chat max_tokens when a request omits it.")
    ] = 256,
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
            max_queue=max_queue,
            request_timeout=request_timeout,
            default_chat_max_tokens=default_max_tokens,
        ),
    )


def pipeline(
    config: ConfigArg,
    overrides: Overrides = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress bar and no run summary table.")
    ] = False,
) -> None:
    """Train, test on held-out data, gate (config gate:), release into the registry; exit 3 when refused."""
    from lmtune.ops.pipeline import print_decision, run_pipeline
    from lmtune.runtime.dist import Dist

    cfg = load_noted(config, overrides)
    try:
        result = run_pipeline(cfg, quiet=quiet)
    finally:
        Dist.get().close()
    if not quiet:
        print_summary(result["summary"])
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
RegistryArg = Annotated[Path, typer.Argument(help="Registry folder (the config's gate.registry).")]


@registry_app.command("list")
def registry_list(registry: RegistryArg) -> None:
    """Every version with its release time and gate metric; * marks the current one."""
    from lmtune.ops.registry import pointer_problem, registry_table

    console.print(registry_table(registry))
    if problem := pointer_problem(registry):
        console.print(f"warning: {problem}", highlight=False, markup=False)


@registry_app.command("release")
def registry_release(
    run: Annotated[Path, typer.Argument(help="A finished pipeline run whose gate passed.")],
    registry: Annotated[
        Path | None, typer.Option("--registry", help="Default: the run config's gate.registry.")
    ] = None,
) -> None:
    """Release a trained, gated run (no retraining); the gate is checked again against the
    current release; exit 3 when it no longer passes."""
    from lmtune.ops.pipeline import release_run

    result = release_run(run, registry)
    if not result["released"]:
        console.print(f"refused: {result['reason']}", highlight=False, markup=False)
        sys.exit(3)
    console.print(f"released {result['version']}: {result['path']} (now current)", highlight=False)


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
