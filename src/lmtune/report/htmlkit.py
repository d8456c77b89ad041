"""Small HTML building blocks for report.html: escaping, number formatting, tables, figures.

Every piece of text from a data file (review texts, labels, file names, error messages) goes
through `esc`, so a row holding `<script>` shows as text and never runs.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmtune.report.plots import data_uri


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe inside attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A readable number: ints with separators, floats with 4 decimals (scientific when tiny).

    Floats that are whole numbers (186.0 examples) print as integers; None prints as a dash.
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value.is_integer() and abs(value) >= 1:
            return f"{int(value):,}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def cell(value: Any, limit: int = 400, cls: str = "") -> str:
    """A table cell: numbers formatted, text escaped and cut to `limit` characters."""
    if isinstance(value, (int, float)) or value is None:
        return f'<td class="num {esc(cls)}">{esc(fmt(value))}</td>'
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + " …"
    return f'<td class="{esc(cls)}">{esc(text)}</td>' if cls else f"<td>{esc(text)}</td>"


@dataclass(frozen=True)
class Styled:
    """A table value with a CSS class (e.g. a change coloured as better or worse)."""

    value: Any
    cls: str


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; headers and cells are escaped (no header row when all headers are empty)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""

    def one(v: Any) -> str:
        return cell(v.value, cls=v.cls) if isinstance(v, Styled) else cell(v)

    body = "".join("<tr>" + "".join(one(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}">{thead}<tbody>{body}</tbody></table>'


def facts(rows: Sequence[tuple[str, Any]]) -> str:
    """Key/value figures as a compact grid (run summary, data sizes)."""
    items = "".join(
        f"<div><dt>{esc(k)}</dt><dd>{esc(fmt(v) if not isinstance(v, str) else v)}</dd></div>"
        for k, v in rows
    )
    return f'<dl class="facts">{items}</dl>' if items else ""


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of nested dicts; lists stay whole (shown as JSON)."""
    if isinstance(data, dict):
        out: list[tuple[str, Any]] = []
        for k, v in data.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        # An empty nested dict still shows up as a row rather than vanishing.
        return out if out or not prefix else [(prefix, "{}")]
    return [(prefix, data)]


def kv_table(data: dict[str, Any], skip: Sequence[str] = ()) -> str:
    """Any dict as a two-column key/value table: how unknown or extra keys are shown."""
    rows = [(k, v) for k, v in flatten({k: v for k, v in data.items() if k not in skip})]
    return table(["key", "value"], rows, "kv") if rows else ""


def figure(png: bytes | None, alt: str, caption: str = "") -> str:
    """An <img> with the PNG embedded as base64 ('' when there is no figure)."""
    if not png:
        return ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">{cap}</figure>'


def section(anchor: str, title: str, body: str) -> str:
    """A titled <section> with an id for the table of contents ('' when body is empty)."""
    if not body.strip():
        return ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def para(text: str, cls: str = "") -> str:
    """A paragraph of escaped text."""
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


CSS = """
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --accent:#2563eb; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; min-height: 100vh;
       box-shadow: 0 0 0 1px var(--line); }
header h1 { margin: 0 0 4px; font-size: 26px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.sub code { background: #f3f4f6; padding: 1px 5px; border-radius: 4px; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0 4px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px; background: #fff; }
.tile .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.tile .k { color: var(--muted); font-size: 12px; }
.where { color: var(--muted); font-size: 12px; margin-top: 2px; }
nav { margin: 18px 0 8px; padding: 8px 0; border-top: 1px solid var(--line); border-bottom: 1px solid var(--line);
      font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
section { margin-top: 30px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; max-width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv td:first-child { color: var(--muted); font-family: ui-monospace, monospace; font-size: 12px; }
table.errors td { max-width: 560px; overflow-wrap: anywhere; }
table.samples td { max-width: 300px; overflow-wrap: anywhere; white-space: pre-wrap; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 12px; }
.box { border-radius: 8px; padding: 12px 16px; margin: 18px 0; border: 1px solid; }
.warn { background: #fffbeb; border-color: #f59e0b; }
.warn h2 { border: 0; margin: 0 0 6px; color: #92400e; }
.ok { background: #f0fdf4; border-color: #86efac; padding: 6px 14px; font-size: 13px; }
.ok details { display: inline; margin-left: 8px; }
.muted { color: var(--muted); }
pre { background: #f3f4f6; padding: 10px 12px; border-radius: 6px; overflow-x: auto; font-size: 12px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
.better { color: #15803d; } .worse { color: #b91c1c; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px 20px;
         margin: 10px 0 16px; }
.facts div { border-left: 3px solid var(--line); padding-left: 10px; }
.facts dt { color: var(--muted); font-size: 12px; }
.facts dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""
