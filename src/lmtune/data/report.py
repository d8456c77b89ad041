"""The data report: one dict (data_report.json) and the same content as Markdown tables.

Accounting invariant the report makes checkable:
    rows_in + rows_added == sum(rows_out.values()) + drops.total
(rows_added counts oversampled copies; every other row either comes out or is a drop.)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data.clean import main_text
from lmtune.data.io import Reject

STAGES = ("validate", "clean", "length", "dedupe", "near_dedupe", "leakage", "balance")
SPLITS = ("train", "eval", "test")


def length_stats(values: list[int]) -> dict[str, float | int]:
    """count/min/mean/p50/p95/max of a list of lengths ({"count": 0} when empty)."""
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "count": len(values),
        "min": int(a.min()),
        "mean": round(float(a.mean()), 1),
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "max": int(a.max()),
    }


def drops_section(rejects: list[Reject]) -> dict[str, Any]:
    """Drop counts in total, per stage, and per stage and reason."""
    by_stage = Counter(r.stage for r in rejects)
    by_reason: dict[str, dict[str, int]] = {}
    for r in rejects:
        d = by_reason.setdefault(r.stage, {})
        d[r.kind or r.reason] = d.get(r.kind or r.reason, 0) + 1
    order = [s for s in STAGES if s in by_stage] + sorted(set(by_stage) - set(STAGES))
    return {
        "total": len(rejects),
        "by_stage": {s: by_stage[s] for s in order},
        "by_reason": {s: dict(sorted(by_reason[s].items(), key=lambda kv: -kv[1])) for s in order},
    }


def build_report(
    *,
    fmt: str,
    cfg_summary: dict[str, Any],
    inputs: list[dict[str, Any]],
    splits: dict[str, list[dict[str, Any]]],
    rejects: list[Reject],
    redactions: dict[str, int],
    pii: dict[str, Any] | None = None,
    changed_rows: int = 0,
    labels: list[str] | None,
    label_weights: list[float] | None,
    leakage: dict[str, Any],
    balance: dict[str, Any] | None,
    rows_added: int,
    warnings: list[str],
    length_fn: Callable[[dict[str, Any]], int] | None,
) -> dict[str, Any]:
    """Assemble the report dict (what data_report.json holds)."""
    lengths: dict[str, Any] = {}
    for name, rows in splits.items():
        lengths[name] = {"chars": length_stats([len(main_text(r, fmt)) for r in rows])}
        if length_fn is not None:
            lengths[name]["tokens"] = length_stats([int(length_fn(r)) for r in rows])
    dist = None
    if labels is not None:
        dist = {}
        for name, rows in splits.items():
            c = Counter(r.get("label") for r in rows)
            dist[name] = {lab: c.get(lab, 0) for lab in labels}
    return {
        "format": fmt,
        **cfg_summary,
        "inputs": inputs,
        "rows_in": sum(i["rows_read"] for i in inputs),
        "rows_added": rows_added,
        "rows_out": {k: len(v) for k, v in splits.items()},
        "drops": drops_section(rejects),
        "redactions": redactions,
        "pii": pii or {},
        "rows_changed_by_cleaning": changed_rows,
        "labels": labels,
        "label_weights": label_weights,
        "label_distribution": dist,
        "lengths": lengths,
        "leakage": leakage,
        "balance": balance,
        "warnings": warnings,
    }


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    """data_report.md: the report as readable Markdown tables."""
    r = report
    out = ["# Data report", ""]
    out.append(
        _table(
            ["", ""],
            [
                ["format", r["format"]],
                ["task", r.get("task", "")],
                ["seed", r.get("seed", "")],
                ["rows in", r["rows_in"]],
                ["rows dropped", r["drops"]["total"]],
                ["rows added (oversampling)", r["rows_added"]],
                *[[f"rows out: {k}", v] for k, v in r["rows_out"].items()],
            ],
        )
    )
    out += [
        "",
        "## Inputs",
        "",
        _table(
            ["split", "file", "rows read", "rejected at validation"],
            [[i["split"], i["file"], i["rows_read"], i["rows_rejected"]] for i in r["inputs"]],
        ),
    ]
    out += ["", *_drops_markdown(r), "", *_pii_markdown(r)]
    if r["label_distribution"]:
        splits = list(r["label_distribution"])
        rows = [
            [lab, *[r["label_distribution"][s].get(lab, 0) for s in splits]] for lab in r["labels"]
        ]
        if r["label_weights"]:
            rows = [[*row, w] for row, w in zip(rows, r["label_weights"], strict=True)]
        out += [
            "",
            "## Labels",
            "",
            _table(["label", *splits, *(["loss weight"] if r["label_weights"] else [])], rows),
        ]
    out += ["", "## Lengths", ""]
    rows = []
    for split, measures in r["lengths"].items():
        for unit, st in measures.items():
            rows.append(
                [
                    split,
                    unit,
                    st["count"],
                    *[st.get(k, "-") for k in ("min", "mean", "p50", "p95", "max")],
                ]
            )
    out.append(_table(["split", "unit", "rows", "min", "mean", "p50", "p95", "max"], rows))
    lk = r["leakage"]
    out += ["", "## Train/eval/test overlap (leakage)", ""]
    if lk.get("checked"):
        out.append(
            _table(
                ["split", "exact", "near"],
                [[s, c["exact"], c["near"]] for s, c in lk["by_split"].items()],
            )
        )
        out += [
            "",
            f"Train rows overlapping another split: {lk['train_rows_leaking']}; "
            f"removed from train: {lk['removed_from_train']}.",
        ]
        if lk["examples"]:
            out += [
                "",
                _table(
                    ["train row", "split", "other row", "kind", "similarity"],
                    [
                        [e["train"], e["split"], e["other"], e["kind"], e["similarity"]]
                        for e in lk["examples"]
                    ],
                ),
            ]
    else:
        out.append("Not checked (data.leakage.check is off).")
    if r["balance"]:
        b = r["balance"]
        out += ["", f"## Balancing ({b['strategy']} on '{b['column']}')", ""]
        out.append(
            _table(
                ["group", "before", "after"],
                [[g, n, b["after"].get(g, 0)] for g, n in b["before"].items()],
            )
        )
    if r["warnings"]:
        out += ["", "## Warnings", "", *[f"- {w}" for w in r["warnings"]]]
    return "\n".join(out) + "\n"


def _drops_markdown(r: dict[str, Any]) -> list[str]:
    """Dropped rows by stage and reason (tokenization included), the ragged epoch tail and
    the rows cleaning changed."""
    out = ["## Dropped rows", ""]
    tok = r.get("tokenize") or {}
    drop_rows = [
        [s, reason, n] for s, d in r["drops"]["by_reason"].items() for reason, n in d.items()
    ]
    drop_rows += [["tokenize", why, n] for why, n in (tok.get("by_reason") or {}).items()]
    if drop_rows:
        out.append(_table(["stage", "reason", "rows"], drop_rows))
        out += ["", "Every dropped row is in rejects.jsonl with its file, line and reason."]
    else:
        out.append("No rows were dropped.")
    if tok.get("rejected"):
        out += [
            "",
            f"{tok['rejected']} train row(s) were dropped at tokenization, after the splits "
            "above were written (data/train.jsonl still holds them).",
        ]
    if tok.get("ragged_tail"):
        out += ["", ragged_tail_line(tok)]
    if r.get("rows_changed_by_cleaning"):
        out += [
            "",
            f"Cleaning (unicode/whitespace normalisation, control characters) changed the "
            f"text of {r['rows_changed_by_cleaning']} row(s) (data.clean.normalize, "
            "data.clean.control_chars).",
        ]
    return out


def _pii_markdown(r: dict[str, Any]) -> list[str]:
    """The personal data and secrets section: what was found, where, and what was done."""
    out = ["## Personal data and secrets", ""]
    pii, red = r.get("pii") or {}, {k: v for k, v in (r.get("redactions") or {}).items() if v}
    mode = pii.get("mode") or {}
    if mode:
        out.append(
            f"Mode: data.clean.pii {mode.get('pii')}, data.clean.secrets {mode.get('secrets')}."
        )
        out.append("")
    found = pii.get("found") or {}
    if found:
        out += [
            "Found and left unchanged (`data.clean.pii: redact` / `data.clean.secrets: redact` "
            "replace them with placeholders):",
            "",
            _table(["kind", "matches"], [[k, v] for k, v in found.items()]),
            "",
        ]
    if red:
        out += ["Redacted:", "", _table(["kind", "replacements"], list(red.items())), ""]
    if found or red:
        examples = pii.get("examples") or []
        out.append(f"Rows with matches: {pii.get('rows', 0)}. First ones:")
        out += [""] + [
            f"- {e['row']}: " + ", ".join(f"{k} {n}" for k, n in e["kinds"].items())
            for e in examples
        ]
    elif mode and set(mode.values()) != {"off"}:
        out.append("None found.")
    else:
        out.append("Detection and redaction are off (data.clean.pii and data.clean.secrets).")
    return out


def ragged_tail_line(tok: dict[str, Any]) -> str:
    """One sentence on the examples each epoch leaves out (fewer than one optimizer step)."""
    return (
        f"Each epoch leaves out {tok['ragged_tail']} of {tok['examples']} training examples "
        f"(fewer than one optimizer step of {tok['step_batch']}); the shuffle changes which "
        "ones every epoch."
    )


def console_lines(report: dict[str, Any], out_dir: Any) -> list[str]:
    """One line per stage that dropped or changed rows, each saying where to look."""
    md, rej = f"{out_dir}/data_report.md", f"{out_dir}/rejects.jsonl"
    lines = []
    for stage, reasons in report["drops"]["by_reason"].items():
        n = report["drops"]["by_stage"][stage]
        why = ", ".join(f"{k} {v}" for k, v in list(reasons.items())[:3])
        lines.append(f"{stage}: dropped {n} row(s) ({why}); each one is in {rej}")
    if report.get("rows_added"):
        lines.append(f"balance: added {report['rows_added']} oversampled row(s); see {md}")
    if report.get("rows_changed_by_cleaning"):
        lines.append(
            f"clean: normalised the text of {report['rows_changed_by_cleaning']} row(s) "
            f"(unicode, whitespace, control characters); see {md}"
        )
    pii = report.get("pii") or {}
    first = ", ".join(
        f"{e['row']} ({', '.join(e['kinds'])})" for e in (pii.get("examples") or [])[:3]
    )
    if pii.get("found"):
        kinds = ", ".join(f"{k} {v}" for k, v in pii["found"].items())
        lines.append(
            f"personal data/secrets found in {pii['rows']} row(s), left unchanged: {kinds}; "
            f"first: {first}; set data.clean.pii: redact (data.clean.secrets: redact) to "
            f"replace them; see {md}"
        )
    red = {k: v for k, v in (report.get("redactions") or {}).items() if v}
    if red:
        kinds = ", ".join(f"{k} {v}" for k, v in red.items())
        lines.append(f"redacted personal data/secrets: {kinds}; first: {first}; see {md}")
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    return lines


def add_tokenize_section(run_dir: Path, section: dict[str, Any]) -> None:
    """Add what happened after the splits were written (rows rejected at tokenization, the
    ragged tail of each epoch) to data_report.json/.md, when the run folder holds them."""
    path = Path(run_dir) / "data_report.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text(encoding="utf-8"))
    report["tokenize"] = section
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(to_markdown(report), encoding="utf-8")
