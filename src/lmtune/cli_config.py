"""`lmtune config show --fields` and `lmtune config import`: the work behind two subcommands."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

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
