"""MODEL_CARD.md's Markdown tables and its training-data section (from data_report.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.report.collect import Folder
from lmtune.report.htmlkit import fmt


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; cells formatted like the HTML report, pipes escaped."""

    def cell(v: Any) -> str:
        text = fmt(v) if isinstance(v, (int, float)) or v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def data_section(f: Folder) -> list[str]:
    """Training data: files, split sizes, cleaning, redactions, label balance, lengths."""
    r, clean = f.data_report, ((f.config.get("data") or {}).get("clean") or {})
    out = ["## Training data", ""]
    if not r:
        sizes = f.summary.get("data") or {}
        out.append(
            "No data_report.json in the run folder. "
            + (
                "Split sizes: " + ", ".join(f"{k} {fmt(v)}" for k, v in sizes.items()) + "."
                if sizes
                else ""
            )
        )
        return out
    out.append(
        md_table(
            ["split", "file", "rows read", "rejected at validation"],
            [
                [
                    i.get("split"),
                    Path(str(i.get("file"))).name,
                    i.get("rows_read"),
                    i.get("rows_rejected"),
                ]
                for i in r.get("inputs") or []
            ],
        )
    )
    split_cfg = (f.config.get("data") or {}).get("split") or {}
    sources: dict[str, list[str]] = {}
    for split, src in (r.get("splits_from") or {}).items():
        if src:  # None: that split does not exist
            sources.setdefault(str(src), []).append(str(split))
    derived = "; ".join(f"{' and '.join(s)} split off the {src} file" for src, s in sources.items())
    stratified = split_cfg.get("stratify") and r.get("labels")
    how = f"{derived} with seed {r.get('seed')}" + (", stratified by label" if stratified else "")
    out += [
        "",
        "Rows after cleaning: "
        + ", ".join(f"{k} {fmt(v)}" for k, v in (r.get("rows_out") or {}).items())
        + (f" ({how})." if derived else "."),
    ]
    return out + _cleaning_lines(r, clean)


def _cleaning_lines(r: dict[str, Any], clean: dict[str, Any]) -> list[str]:
    """Cleaning, drops by reason, redactions, leakage, label balance and token lengths."""
    out: list[str] = []
    drops = r.get("drops") or {}
    on = [k for k in ("normalize", "control_chars", "dedupe", "pii", "secrets") if clean.get(k)]
    if (clean.get("near_dedupe") or {}).get("enabled"):
        on.append("near_dedupe")
    out += [
        "",
        f"Cleaning: {', '.join(on) or 'none'}; {fmt(drops.get('total', 0))} row(s) dropped.",
    ]
    by_reason = drops.get("by_reason") or {}
    if by_reason:
        out += [
            "",
            md_table(
                ["stage", "reason", "rows"],
                [[s, why, n] for s, d in by_reason.items() for why, n in d.items()],
            ),
        ]
    red = r.get("redactions") or {}
    out += [
        "",
        "Redactions (personal data and secrets replaced by placeholders): "
        + (", ".join(f"{k} {fmt(v)}" for k, v in red.items()) if red else "redaction was off")
        + ".",
    ]
    lk = r.get("leakage") or {}
    if lk.get("checked"):
        out += [
            "",
            f"Train rows also found in eval/test (exact or near duplicates): {fmt(lk.get('train_rows_leaking'))}; "
            f"removed from train: {fmt(lk.get('removed_from_train'))}.",
        ]
    dist = r.get("label_distribution") or {}
    if dist and r.get("labels"):
        splits = list(dist)
        out += [
            "",
            md_table(
                ["label", *splits],
                [[lab, *[dist[s].get(lab, 0) for s in splits]] for lab in r["labels"]],
            ),
        ]
    tokens = {
        s: m["tokens"]
        for s, m in (r.get("lengths") or {}).items()
        if (m.get("tokens") or {}).get("count")
    }
    if tokens:
        out += [
            "",
            md_table(
                ["split", "tokens p50", "p95", "max"],
                [[s, *[str(t.get(k)) for k in ("p50", "p95", "max")]] for s, t in tokens.items()],
            ),
        ]
    return out
