"""`lmtune config show` (with --fields) and `lmtune config import`: the `config` command group."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lmtune.cli_common import Overrides, console, err_console
from lmtune.errors import UserError


def import_command(source: Path, out: Path | None, err_console: Console) -> None:
    """Print (or write to `out`) the lmtune config for SOURCE; list on stderr what was not mapped."""
    from lmtune.config_import import render

    text, unmapped = render(source)
    if out is None:
        print(text, end="")
    else:
        out.write_text(text, encoding="utf-8")
        err_console.print(f"written: {out}", highlight=False, markup=False)
    err_console.print(
        f"not mapped ({len(unmapped)}):" if unmapped else "every key was mapped",
        highlight=False,
        markup=False,
    )
    for line in unmapped:
        err_console.print(f"  {line}", highlight=False, markup=False)


def print_fields(section: str | None, console: Console) -> None:
    """`config show --fields [SECTION]`: a table on a terminal, one plain line per key otherwise."""
    from lmtune.config import describe_fields

    rows = describe_fields()
    if section:
        rows = [r for r in rows if r[0] == section or r[0].startswith(section + ".")]
        if not rows:
            sections = sorted({k.split(".")[0] for k, _, _ in describe_fields()})
            raise UserError(f"no config keys under '{section}'; sections: {', '.join(sections)}")
    if not sys.stdout.isatty():  # piped into grep or a file: whole keys, never wrapped
        for key, default, desc in rows:
            print(f"{key}\t{default}\t{desc}")
        return
    table = Table("key", "default", "description")
    for key, default, desc in rows:
        table.add_row(key, default, desc)
    console.print(table)


config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")


@config_app.command("show")
def config_show(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML); omit for the defaults.")
    ] = None,
    overrides: Overrides = None,
    fields: Annotated[
        bool,
        typer.Option(
            "--fields",
            help="List every key with its default and meaning; CONFIG may name a section (train, data.clean) to list only its keys.",
        ),
    ] = False,
) -> None:
    """Print the resolved config (file + overrides + defaults); aliases read are noted as comments."""
    from lmtune.config import dump_config, load_config

    if fields:
        print_fields(str(config) if config is not None else None, console)
        return
    cfg = load_config(config, overrides or [])
    print(dump_config(cfg), end="")
    for note in cfg.notes:
        print(f"# {note}")


@config_app.command("import")
def config_import(
    source: Annotated[
        Path, typer.Argument(help="An Axolotl, LLaMA-Factory or TRL (HfArgumentParser) YAML.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the lmtune config here (default: print).")
    ] = None,
) -> None:
    """Convert another tool's training YAML into an lmtune config; list what it could not map."""
    import_command(source, out, err_console)
