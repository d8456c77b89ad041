"""What the `lmtune` subcommands share: the consoles, the config arguments, loading a config
with its notes, and the tables a run ends with. cli.py and the cli_* command modules import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).")]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="key.sub=value overrides, e.g. train.lr=1e-4 (also learning_rate=1e-4, --learning_rate 1e-4)"
    ),
]


def load_noted(config: Path | None, overrides: list[str] | None):  # noqa: ANN201 - lmtune.config.Config
    """load_config, then say on stderr what loading chose for the user (aliases, task, lr)."""
    from lmtune.config import load_config

    cfg = load_config(config, overrides or [])
    if os.environ.get("RANK", "0") == "0":  # torchrun workers: the launcher said it already
        for note in cfg.notes:
            err_console.print(f"config: {note}", highlight=False, markup=False)
    return cfg


def print_run_folder(run: Path) -> None:
    """The last lines of a run: where everything is, and the page to open."""
    print(f"run folder: {run}", flush=True)
    if (run / "report.html").is_file():
        print(f"report: {run / 'report.html'}", flush=True)


def print_summary(summary: dict) -> None:
    """The run summary table (speed, memory, losses, best checkpoint, test metrics)."""
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


def print_baselines(report: dict) -> None:
    """The zero-/few-shot baselines table and its notes."""
    from lmtune.evaluate.baselines import baselines_table

    console.print(baselines_table(report))
    for note in report.get("notes") or []:
        console.print(f"note: {note}", highlight=False)
