"""The data report: one dict (data_report.json) and the same content as Markdown tables.

Accounting invariant the report makes checkable:
    rows_in + rows_added == sum(rows_out.values()) + drops.total
(rows_added counts oversampled copies; every other row either comes out or is a drop.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
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
    out += ["", "## Dropped rows", ""]
    if r["drops"]["total"]:
        out.append(
            _table(
                ["stage", "reason", "rows"],
                [
                    [s, reason, n]
                    for s, d in r["drops"]["by_reason"].items()
                    for reason, n in d.items()
                ],
            )
        )
        out += ["", "Every dropped row is in rejects.jsonl with its file, line and reason."]
    else:
        out.append("No rows were dropped.")
    red = r["redactions"]
    out += ["", "## Redactions", ""]
    out.append(
        _table(["kind", "replacements"], [[k, v] for k, v in red.items()])
        if red
        else "Redaction is off (data.clean.pii and data.clean.secrets)."
    )
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
